"""Update pipeline bench (issue 4): bytes, throughput and error of phone-side encode + server decode.

For the default model (~1.25M parameters) and a cohort of phones (256; 32 with --quick):

- bytes per update for each stage setting vs dense fp32, and the compression ratio;
- encode + decode throughput of the whole cohort in one vectorised call (updates/s, MB/s of fp32
  deltas) — and, for the headline setting (top-k 1% + 4-bit), the same work one phone at a time;
- the error of the decoded cohort mean vs the true mean: mean squared error, relative L2 error, and
  bias as the relative projection <mean_decoded − mean_true, mean_true> / ‖mean_true‖²
  (0 for an unbiased scheme; −0.3 means the mean shrinks by 30% along the truth);
- as a yardstick, the measured time of one local training round of the same model on this machine
  (4 SGD steps, batch 16 × 20 tokens, 1 torch thread — the size of a keyboard user's local epoch).

Synthetic deltas: a shared heavy-tailed direction plus per-phone variation of the same scale profile
(per-coordinate scales lognormal(0, 1.5), so a few coordinates carry most of the energy, as in a
keyboard model whose embedding rows for a user's words move most).

    .venv/bin/python bench/update_pipeline.py [--quick] [--phones N] [--results-md docs/results.md]

Last line: ``RESULT compression_x=… vectorised_speedup=… mean_rel_error=…`` (compression and error of
top-k 1% + 4-bit; speedup of encode+decode vectorised over the cohort vs one phone at a time).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedkey.models.model_config import ModelConfig
from fedkey.privacy.mechanisms import clip_rows
from fedkey.protocol.pipeline import UpdatePipeline, decode, decode_batch

HEADLINE = "top-k 1% + 4-bit"
SETTINGS: list[tuple[str, list[dict[str, Any]]]] = [
    ("dense fp32", []),
    ("8-bit", [{"kind": "quantize", "bits": 8}]),
    ("4-bit", [{"kind": "quantize", "bits": 4}]),
    ("rotate + 4-bit", [{"kind": "rotate", "block": 1024}, {"kind": "quantize", "bits": 4}]),
    ("rotate + 1-bit", [{"kind": "rotate", "block": 1024}, {"kind": "quantize", "bits": 1}]),
    ("top-k 1% fp32", [{"kind": "top_k", "fraction": 0.01}]),
    (HEADLINE, [{"kind": "top_k", "fraction": 0.01}, {"kind": "quantize", "bits": 4}]),
    (
        "top-k 1% + rotate + 4-bit",
        [{"kind": "top_k", "fraction": 0.01}, {"kind": "rotate", "block": 1024}, {"kind": "quantize", "bits": 4}],
    ),
    ("random-k 1% + 4-bit", [{"kind": "random_k", "fraction": 0.01}, {"kind": "quantize", "bits": 4}]),
    (
        "local DP ε=8: clip + random-k 1% + noise + 4-bit",
        [
            {"kind": "clip", "norm": 0.1},
            {"kind": "random_k", "fraction": 0.01},
            {"kind": "gaussian_noise", "epsilon": 8.0, "delta": 1e-8},
            {"kind": "quantize", "bits": 4},
        ],
    ),
]
QUICK = {"dense fp32", "4-bit", HEADLINE, "random-k 1% + 4-bit"}
SECTION = "## Update pipeline (issue 4)"


def make_deltas(n: int, dim: int, seed: int) -> np.ndarray:
    """Float32 deltas [n, dim]: shared heavy-tailed direction + per-phone variation, ~0.05 L2 norm."""
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, 1.5, dim).astype(np.float32)
    scale *= np.float32(0.05 / np.sqrt(np.sum(scale.astype(np.float64) ** 2)))
    shared = rng.standard_normal(dim, dtype=np.float32) * scale
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(n):
        out[i] = shared + rng.standard_normal(dim, dtype=np.float32) * scale
    return out


def local_round_seconds() -> float:
    """Wall time of one local round (4 SGD steps, batch 16 × 20) of the default model, 1 torch thread."""
    import torch

    from fedkey.models.cifg_lstm import CifgLstm

    torch.set_num_threads(1)
    model = CifgLstm(ModelConfig(preset="default"), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (16, 21), generator=gen)
    mask = torch.ones(16, 20)

    def step() -> None:
        opt.zero_grad()
        loss, count = model.loss(tokens[:, :-1], tokens[:, 1:], mask)
        (loss / count).backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(4):
        step()
    return time.perf_counter() - t0


def true_mean(x: np.ndarray, clip_norm: float | None) -> np.ndarray:
    """Mean of the rows (clipped first if the pipeline clips), in float64, 8 rows at a time."""
    total = np.zeros(x.shape[1])
    for start in range(0, x.shape[0], 8):
        rows = x[start : start + 8].astype(np.float64)
        total += (clip_rows(rows, clip_norm)[0] if clip_norm is not None else rows).sum(axis=0)
    return total / x.shape[0]


def measure(name: str, stages: list[dict[str, Any]], x: np.ndarray, dim: int) -> dict[str, Any]:
    n = x.shape[0]
    pipe = UpdatePipeline(stages, dim)
    ids = np.arange(n)
    t0 = time.perf_counter()
    enc = pipe.encode(x, ids, round=1, model_version=1, seed=2026)
    t1 = time.perf_counter()
    dec = decode_batch(enc.messages, dim)
    t2 = time.perf_counter()
    truth = true_mean(x, stages[0]["norm"] if stages and stages[0]["kind"] == "clip" else None)
    mean_dec = dec.deltas.astype(np.float64).mean(axis=0)
    err = mean_dec - truth
    tnorm2 = float(truth @ truth)
    return {
        "name": name,
        "bytes": enc.total_bytes / n,
        "compression": 4 * dim / (enc.total_bytes / n),
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
        "mse": float(err @ err) / dim,
        "rel_error": float(np.sqrt(err @ err / tnorm2)),
        "bias": float(err @ truth / tnorm2),
        "pipe": pipe,
    }


def vectorised(pipe: UpdatePipeline, x: np.ndarray, dim: int) -> float:
    """Seconds to encode the cohort in one call and decode it in one call."""
    t0 = time.perf_counter()
    decode_batch(pipe.encode(x, np.arange(x.shape[0]), round=1, model_version=1, seed=2026).messages, dim)
    return time.perf_counter() - t0


def one_at_a_time(pipe: UpdatePipeline, x: np.ndarray, dim: int) -> float:
    """Seconds to encode and decode the cohort phone by phone (n = 1 calls), collecting the decoded deltas
    into one [n, d] array as `decode_batch` returns them (same output, so the same memory to fill)."""
    t0 = time.perf_counter()
    decoded = np.empty(x.shape, dtype=np.float32)
    for i in range(x.shape[0]):
        msg = pipe.encode(x[i : i + 1], [i], round=1, model_version=1, seed=2026).messages[0]
        decoded[i] = decode(msg, dim).delta
    return time.perf_counter() - t0


def compare(pipe: UpdatePipeline, x: np.ndarray, dim: int, repeats: int) -> tuple[float, float]:
    """(vectorised, one at a time) seconds: alternated `repeats` times, best of each, so load spikes from
    other jobs on a shared machine hit both sides alike."""
    vec, single = [], []
    for _ in range(repeats):
        vec.append(vectorised(pipe, x, dim))
        single.append(one_at_a_time(pipe, x, dim))
    return min(vec), min(single)


def render_section(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    n, dim = info["phones"], info["dim"]
    lines = [
        SECTION,
        "",
        f"Measured by `{info['command']}` on {info['machine']} ({info['date']}; load average "
        f"{info['load']:.1f} from other jobs sharing the machine, so times are pessimistic); default model, "
        f"d = {dim:,} parameters, {n} phones, synthetic heavy-tailed deltas (see the bench docstring). "
        "Encode and decode are each one vectorised call over the whole cohort.",
        "",
        "| setting | bytes/update | vs fp32 | encode+decode ms/update | MSE of mean | rel. error of mean | bias |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = (r["encode_s"] + r["decode_s"]) / n * 1e3
        lines.append(
            f"| {r['name']} | {r['bytes']:,.0f} | {r['compression']:.1f}× | {per:.1f} | {r['mse']:.3g} | "
            f"{r['rel_error']:.3f} | {r['bias']:+.3f} |"
        )
    head = info["headline"]
    lines += [
        "",
        f"Headline ({HEADLINE}): **{head['compression']:.0f}× fewer bytes than dense fp32** (target ≥ 100×). "
        f"Encode+decode of all {n} updates (best of alternated repeats): {info['vec_s']:.2f} s vectorised "
        f"({n / info['vec_s']:.1f} updates/s, {info['mb_s']:.0f} MB/s of fp32 deltas) vs {info['single_s']:.2f} s "
        f"one phone at a time (speedup {info['speedup']:.2f}×). One local training round of the same model "
        f"(4 SGD steps, batch 16×20, 1 torch thread) took {info['train_s']:.2f} s here, so encode+decode costs "
        f"{info['vec_s'] / n / info['train_s'] * 100:.0f}% of a phone's local round "
        f"({info['vec_s']:.1f} s for the cohort vs {info['train_s'] * n:.0f} s of local training).",
        "",
        "Reading the table: top-k keeps the largest 1% of coordinates and is biased (the mean shrinks: negative "
        "bias), which error feedback corrects over rounds; random-k and stochastic quantization are unbiased "
        "(bias ≈ 0) but noisier; rotation shrinks each chunk's range and so the 4-bit error; the local-DP row "
        "shows the price of ε = 8 per report for one cohort without a shuffler (the noise dominates every error "
        "column there, bias included). Vectorising over phones saves no arithmetic: what the batched call gains "
        f"({info['speedup']:.2f}× here) comes from fewer, larger numpy calls; on a phone host its value is also one "
        "call per cohort with bounded memory.",
        "",
        "```",
        info["result"],
        "```",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this bench's section of a shared results file (or append it); other sections stay as they are."""
    text = path.read_text() if path.exists() else "# Results\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 phones and 4 settings (< 1 minute)")
    parser.add_argument("--phones", type=int, default=None, help="cohort size (default 256, quick 32)")
    parser.add_argument("--results-md", type=Path, default=None, help="write this bench's section into that file")
    args = parser.parse_args(argv)
    n = args.phones or (32 if args.quick else 256)
    dim = ModelConfig(preset="default").num_parameters()
    x = make_deltas(n, dim, seed=7)
    rows = []
    for name, stages in SETTINGS:
        if args.quick and name not in QUICK:
            continue
        r = measure(name, stages, x, dim)
        rows.append(r)
        print(
            f"{name:<50} {r['bytes']:>12,.0f} B {r['compression']:>8.1f}x  enc {r['encode_s']:6.2f}s "
            f"dec {r['decode_s']:6.2f}s  mse {r['mse']:.3g}  rel {r['rel_error']:.3f}  bias {r['bias']:+.3f}",
            flush=True,
        )
    head = next(r for r in rows if r["name"] == HEADLINE)
    vec_s, single_s = compare(head["pipe"], x, dim, repeats=2 if args.quick else 3)
    train_s = local_round_seconds()
    speedup = single_s / vec_s
    mb_s = n * 4 * dim / 1e6 / vec_s
    print(
        f"{HEADLINE}: vectorised {vec_s:.2f}s vs one at a time {single_s:.2f}s ({speedup:.2f}x); "
        f"{n / vec_s:.1f} updates/s, {mb_s:.0f} MB/s; local training round {train_s:.2f}s"
    )
    result = (
        f"RESULT compression_x={head['compression']:.1f} vectorised_speedup={speedup:.2f} "
        f"mean_rel_error={head['rel_error']:.3f}"
    )
    if args.results_md is not None:
        command = "python bench/update_pipeline.py" + (" --quick" if args.quick else "")
        if args.phones:
            command += f" --phones {args.phones}"
        info = {
            "phones": n,
            "dim": dim,
            "command": command + f" --results-md {args.results_md}",
            "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, numpy {np.__version__}",
            "date": time.strftime("%Y-%m-%d"),
            "load": os.getloadavg()[0],
            "headline": head,
            "vec_s": vec_s,
            "single_s": single_s,
            "speedup": speedup,
            "mb_s": mb_s,
            "train_s": train_s,
            "result": result,
        }
        write_section(args.results_md, render_section(rows, info))
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
