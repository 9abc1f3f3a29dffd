"""How far the server's decoded cohort mean is from the true one, on real phone updates (issue 5).

Trains real phones' local updates with the phone host's own trainer (chitchat training users; the
federated recipe of docs/results.md: 2 local passes of batch 4 at local rate 2, dropout 0.25, at most
64 sampled messages, FedAvg weights from the whole text cache) from two model states: a checkpoint (a
trained model: late in a run) and the seeded initialisation (a run's first round). Each candidate update
pipeline encodes the updates as the phones do and decodes them as the server does; the weighted mean of
the decoded updates is compared with that of the raw deltas, for cohorts of 25 and 100 phones:

- relative error ‖m̂ − m‖ / ‖m‖ of the cohort mean (what the server optimizer is fed);
- bias, the relative projection ⟨m̂ − m, m⟩ / ‖m‖² (top-k shrinks the mean: negative);
- bytes per update, and the compression against float32 deltas;
- the decoded mean's output bias per band of pieces by frequency (trained state, 25 phones): top-k
  keeps each phone's large push up on the pieces it saw and drops the small push down the softmax
  gives every other piece, so the decoded mean raises rarer pieces' logits where the true mean barely
  moves them.

    .venv/bin/python bench/cohort_mean_error.py [--checkpoint runs/central-default/best.pt]
        [--data data/chitchat] [--quick] [--write]

``--quick``: 25 phones, the trained state only, four pipelines. Last line:
``RESULT default_rel_err=… previous_default_rel_err=… default_compression_x=… previous_compression_x=…
default_rare_bias_excess=…`` (25 phones, the trained state; the last: how far above the true mean the
decoded mean moves the output bias of pieces past frequency rank 500, ×10⁻⁵, averaged over their bands).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fed_quality import ROOT, shown, write_section
from weight_drift import BANDS, band_rows, piece_counts

from fedkey.config import default_pipeline
from fedkey.device_sim.config import PopulationConfig
from fedkey.device_sim.federated_data import FederatedData
from fedkey.device_sim.host_runtime import PhoneHost
from fedkey.device_sim.phone_host import HostTask
from fedkey.models.checkpoint_file import CheckpointFile
from fedkey.models.cifg_lstm import initial_weights
from fedkey.models.manifest import flatten_params, param_layout
from fedkey.models.model_config import ModelConfig
from fedkey.protocol.pipeline import UpdatePipeline, decode_batch
from fedkey.protocol.pipeline_config import PipelineConfig

SECTION = "## Update pipeline on real updates: the cohort mean (issue 5)"
#: The earlier default pipelines, oldest first, each with the tag its table row gets; the last is the
#: one the RESULT line compares the default against.
FORMER_DEFAULTS: list[tuple[list[dict[str, Any]], str]] = [
    ([{"kind": "top_k", "fraction": 0.1}, {"kind": "quantize", "bits": 4}], " (default until 2026-11-27)"),
    ([{"kind": "top_k", "fraction": 0.25}, {"kind": "quantize", "bits": 8}], " (default 2026-11-27 to 2026-12-06)"),
]
PREVIOUS_DEFAULT = FORMER_DEFAULTS[-1][0]
CANDIDATES: list[list[dict[str, Any]]] = [
    PREVIOUS_DEFAULT,
    FORMER_DEFAULTS[0][0],
    [{"kind": "top_k", "fraction": 0.1}],
    [{"kind": "top_k", "fraction": 0.1}, {"kind": "quantize", "bits": 8}],
    [{"kind": "top_k", "fraction": 0.1}, {"kind": "quantize", "bits": 4, "chunk": 64}],
    [{"kind": "top_k", "fraction": 0.2}, {"kind": "quantize", "bits": 8}],
    [{"kind": "top_k", "fraction": 0.25}, {"kind": "quantize", "bits": 4}],
    [{"kind": "quantize", "bits": 4}],
    [{"kind": "rotate", "block": 1024}, {"kind": "quantize", "bits": 4}],
    [{"kind": "quantize", "bits": 8}],
    [{"kind": "rotate", "block": 1024}, {"kind": "quantize", "bits": 8}],
]
QUICK = 4  # the first candidates, plus the default


def phone_deltas(
    host: PhoneHost, weights: np.ndarray, phones: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(deltas [P, D], FedAvg weights [P], phone ids) of ``phones`` phones drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    user_of = host.population.user_of(np.arange(host.population.size, dtype=np.int64)).tolist()
    with_text = [phone for phone, user in enumerate(user_of) if host.users[user].messages]
    ids = sorted(rng.choice(with_text, phones, replace=False).tolist())
    seeds = rng.integers(0, 2**31, phones).tolist()
    users = [user_of[i] for i in ids]
    work = [host.phone_batches(u, s) for u, s in zip(users, seeds, strict=True)]
    deltas, _ = host.train(weights, [w[0] for w in work], [w[1] for w in work], seeds, host.task.threads)
    return deltas, np.array([w[2] for w in work], np.float64), ids


def mean_error(
    pipeline: UpdatePipeline, deltas: np.ndarray, weights: np.ndarray, ids: list[int], bands: list[np.ndarray]
) -> dict:
    """Relative error and bias of the decoded weighted mean, the mean bytes per update, and the decoded
    mean's average over each group of coordinates in ``bands`` (flat indices)."""
    w = weights / weights.sum()
    true = w @ deltas.astype(np.float64)
    encoded = pipeline.encode(deltas, ids, 1, 0, seed=0)
    decoded = w @ decode_batch(encoded.messages, pipeline.dim).deltas.astype(np.float64)
    err = decoded - true
    size = float(np.mean([len(m) for m in encoded.messages]))
    return {
        "rel_err": float(np.linalg.norm(err) / np.linalg.norm(true)),
        "bias": float(err @ true / (true @ true)),
        "kb": size / 1e3,
        "x": deltas.shape[1] * 4 / size,
        "bands": [float(decoded[b].mean()) for b in bands],
        "true_bands": [float(true[b].mean()) for b in bands],
    }


def out_bias_bands(model: ModelConfig, data: FederatedData) -> list[tuple[str, np.ndarray]]:
    """(label, flat indices) of the output bias's coordinates per piece-frequency band (bench/weight_drift.py)."""
    spec = next(s for s in param_layout(model) if s.name == "out_bias")
    counts = piece_counts(data, spec.shape[0], None)
    first = spec.offset // 4  # the layout's offsets are in bytes of float32
    return [(label, first + rows) for label, rows in band_rows(counts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "central-default" / "best.pt")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat")
    parser.add_argument("--quick", action="store_true", help="25 phones, the trained state, four pipelines")
    parser.add_argument("--write", action="store_true", help="write the section into docs/results.md")
    args = parser.parse_args()
    model = ModelConfig(preset="default").resolved()
    task = HostTask(
        data_dir=str(args.data),
        model=model,
        population=PopulationConfig(),
        pipeline=PipelineConfig.model_validate([]),
        run_seed=0,
        batch_size=4,
        local_epochs=2,
        update_weight="cached",
        lr=2.0,
        dropout=0.25,
        threads=1,
    )
    torch.set_num_threads(1)  # tiny per-phone products: a second thread only waits, and more so beside other jobs
    host = PhoneHost(task)
    checkpoint = CheckpointFile.load(args.checkpoint)
    states = {"trained": flatten_params(checkpoint.params, param_layout(model)).astype(np.float32)}
    if not args.quick:
        states["initial"] = initial_weights(model, 0)
    default = default_pipeline().describe()
    previous = PipelineConfig.model_validate(PREVIOUS_DEFAULT).describe()
    candidates = [PipelineConfig.model_validate(c) for c in CANDIDATES]
    if args.quick:
        candidates = candidates[:QUICK]
    if all(c.describe() != default for c in candidates):
        candidates.append(default_pipeline())
    pipelines = [UpdatePipeline(c, model.num_parameters()) for c in candidates]
    cohorts = [25] if args.quick else [25, 100]
    bands = out_bias_bands(model, host.data)  # the corpus the phone host already loaded
    results: dict[tuple[str, int, str], dict] = {}
    started = time.perf_counter()
    for state, weights in states.items():
        deltas, fedavg, ids = phone_deltas(host, weights, max(cohorts), seed=1)
        for n in cohorts:
            for config, pipeline in zip(candidates, pipelines, strict=True):
                results[(state, n, config.describe())] = mean_error(
                    pipeline, deltas[:n], fedavg[:n], ids[:n], [b for _, b in bands]
                )
    elapsed = time.perf_counter() - started

    tags = {PipelineConfig.model_validate(c).describe(): tag for c, tag in FORMER_DEFAULTS} | {default: " (default)"}

    columns = [(s, n) for s in states for n in cohorts]
    lines = [
        SECTION,
        "",
        "`bench/cohort_mean_error.py` trains real phones' updates with the phone host's trainer (chitchat, the",
        "default model, the federated recipe: 2 local passes of batch 4 at rate 2, dropout 0.25, FedAvg weights",
        f"of the whole text cache) from the central baseline's best checkpoint ({shown(args.checkpoint)}: a",
        "trained model, as late in a run) and from the seeded initialisation (a first round), encodes and decodes",
        "them with each update pipeline and compares the decoded weighted cohort mean m̂ with the true one m:",
        "relative error ‖m̂ − m‖ / ‖m‖ and bias ⟨m̂ − m, m⟩ / ‖m‖² (negative: the mean shrinks).",
        f"Measured {time.strftime('%Y-%m-%d')} in {elapsed:.0f} s.",
        "",
        "| pipeline | bytes / update | vs float32 | "
        + " | ".join(f"error, {s}, {n} phones" for s, n in columns)
        + " | bias, trained, 25 |",
        "|---" * (4 + len(columns)) + "|",
    ]
    for config in candidates:
        key = config.describe()
        first = results[(columns[0][0], columns[0][1], key)]
        cells = " | ".join(f"{results[(s, n, key)]['rel_err']:.3f}" for s, n in columns)
        lines.append(
            f"| `{key}`{tags.get(key, '')} | {first['kb']:.0f} kB | {first['x']:.1f}× | {cells} | "
            f"{results[('trained', 25, key)]['bias']:+.3f} |"
        )
    true_bands = results[("trained", 25, default)]["true_bands"]  # the same for every pipeline
    lines += [
        "",
        "What the decoded mean does to the output bias (trained state, 25 phones): the mean of its",
        "coordinates per band of pieces by frequency rank in the training text, ×10⁻⁵, the true mean first.",
        "An excess that comes from what the pipeline drops recurs in every round's mean, where noise averages out.",
        "",
        "| pipeline | " + " | ".join(f"ranks {label}" for label, _ in bands) + " |",
        "|---" * (1 + len(bands)) + "|",
        "| true mean | " + " | ".join(f"{v * 1e5:+.1f}" for v in true_bands) + " |",
    ]
    for config in candidates:
        key = config.describe()
        cells = " | ".join(f"{v * 1e5:+.1f}" for v in results[("trained", 25, key)]["bands"])
        lines.append(f"| `{key}`{tags.get(key, '')} | {cells} |")
    command = "python bench/cohort_mean_error.py" + (" --quick" if args.quick else "") + " --write"
    lines += ["", "Command:", "", f"    {command}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(text)
    now, before = results[("trained", 25, default)], results[("trained", 25, previous)]
    print(
        f"RESULT default_rel_err={now['rel_err']:.3f} previous_default_rel_err={before['rel_err']:.3f} "
        f"default_compression_x={now['x']:.1f} previous_compression_x={before['x']:.1f} "
        f"default_rare_bias_excess={rare_excess(now):.1f}"
    )


def rare_excess(result: dict) -> float:
    """Mean of (decoded − true) output bias over the bands past frequency rank 500, ×10⁻⁵."""
    pairs = list(zip(result["bands"], result["true_bands"], strict=True))[BANDS.index(500) :]
    return float(np.mean([d - t for d, t in pairs]) * 1e5)


if __name__ == "__main__":
    main()
