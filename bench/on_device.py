"""On-device bundle benchmark: sizes, per-token latency, train-step latency and memory, K-step local update.

For the default and small presets (``--quick``: default only) it builds a bundle (``export_bundle``) from a
briefly trained model (or from ``--checkpoint`` for that checkpoint's preset), then measures on one thread,
side by side:

    file sizes            predict.onnx / predict.int8.onnx / train graphs / weights.bin
    int8 vs fp32          top-1 agreement and next-piece accuracy on held-out users' chitchat messages
    prediction latency    one token per call, batch 1, wall p50/p95 and CPU-time p95 (fp32 and int8), each
                          session created with the manifest's session config; peak RSS growth of creating the
                          session and predicting (in a fresh process)
    train step            train_step.onnx vs the same step in torch eager (autograd module loss and the
                          torch.func step the graph is traced from), same batch; peak RSS growth
    local update          local_update.onnx (K steps, delta clipped) vs the torch reference

The last line is ``RESULT predict_int8_mb=… top1_agreement=… token_p95_ms=… step_onnx_over_torch=…`` for
the default preset; ``step_onnx_over_torch`` divides the ONNX step time by the faster torch variant.

    .venv/bin/python bench/on_device.py --quick          # under a minute
    .venv/bin/python bench/on_device.py --checkpoint runs/demo/model.pt
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

from fedkey.models.bundle import export_bundle
from fedkey.models.checkpoint import Checkpoint
from fedkey.models.cifg_lstm import CifgLstm, ModelConfig
from fedkey.models.manifest import Bundle, load_bundle
from fedkey.models.onnx_local_update import Batches, local_update_onnx, local_update_torch
from fedkey.models.onnx_predict import OnnxPredictor, make_session
from fedkey.models.onnx_train import sgd_step
from fedkey.models.sequences import message_sequences
from fedkey.models.tokenizer import BOS_ID, Tokenizer, normalize, train_tokenizer

MB = 1_000_000


@dataclass(frozen=True)
class Settings:
    presets: tuple[str, ...]
    seq_len: int
    train_messages: int
    tokenizer_messages: int
    train_seconds: dict[str, float]
    eval_messages: int
    latency_tokens: int
    step_reps: int
    step_batch: int
    local_steps: int


# Quick: the default preset only (the RESULT line), trained for 20 s so that agreement means something.
QUICK = Settings(
    presets=("default",),
    seq_len=12,
    train_messages=40_000,
    tokenizer_messages=30_000,
    train_seconds={"default": 20.0},
    eval_messages=300,
    latency_tokens=600,
    step_reps=5,
    step_batch=16,
    local_steps=8,
)
FULL = Settings(
    presets=("default", "small"),
    seq_len=20,
    train_messages=1_000_000,
    tokenizer_messages=120_000,
    train_seconds={"default": 60.0, "small": 30.0},
    eval_messages=2_000,
    latency_tokens=5_000,
    step_reps=20,
    step_batch=16,
    local_steps=16,
)


def chitchat_by_user() -> dict[str, list[str]]:
    """Normalised messages per sender from the installed chitchat-dataset package."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the chitchat-dataset package is not installed (pip install chitchat-dataset)")
    data = json.loads((Path(next(iter(spec.submodule_search_locations))) / "dataset.json").read_text())
    users: dict[str, list[str]] = {}
    for conversation in data.values():
        for turn in conversation["messages"]:
            for message in turn:
                text = normalize(message["text"])
                if text:
                    users.setdefault(message["sender"], []).append(text)
    return users


def split_users(users: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Train and held-out messages; a user is held out by a hash of the id (about 10% of users)."""
    train, held_out = [], []
    for user, messages in sorted(users.items()):
        bucket = int(hashlib.sha256(user.encode()).hexdigest(), 16) % 10
        (held_out if bucket == 0 else train).extend(messages)
    return train, held_out


def rows(tok: Tokenizer, messages: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows (inputs, targets, mask), each [R, seq_len], as every fedkey trainer builds them."""
    seqs = message_sequences(tok, messages, seq_len)
    return seqs.inputs, seqs.targets, seqs.mask


def train_briefly(model: CifgLstm, data: tuple[np.ndarray, np.ndarray, np.ndarray], seconds: float) -> int:
    """Adam on shuffled batches of 32 rows for a wall-clock budget; returns the tokens seen."""
    inputs, targets, mask = (torch.from_numpy(a) for a in data)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    rng = np.random.default_rng(0)
    seen, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        idx = torch.from_numpy(rng.integers(0, len(inputs), 32))
        total, count = model.loss(inputs[idx], targets[idx], mask[idx])
        opt.zero_grad()
        (total / count.clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += int(count)
    return seen


class PeakRss:
    """Samples this process's RSS in a thread; `growth_mb` = peak minus the RSS when entered."""

    def __enter__(self) -> PeakRss:
        self._proc = psutil.Process()
        self.base = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / MB


def interleaved_median_ms(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median milliseconds of each function, calling them in turn so that all see the same machine load."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def agreement(bundle: Bundle, held: tuple[np.ndarray, ...]) -> tuple[float, float, float]:
    """(int8-vs-fp32 top-1 agreement, fp32 accuracy, int8 accuracy) over the masked positions."""
    inputs, targets, mask = held
    fp32 = OnnxPredictor.from_bundle(bundle, "predict").run_sequences(inputs).argmax(-1)
    int8 = OnnxPredictor.from_bundle(bundle, "predict_int8").run_sequences(inputs).argmax(-1)
    on = mask > 0
    return (float((fp32 == int8)[on].mean()), float((fp32 == targets)[on].mean()), float((int8 == targets)[on].mean()))


def keyboard_events(predictor: OnnxPredictor, tokens: np.ndarray) -> list[tuple[float, float]]:
    """Feed tokens one key event at a time (batch 1, state carried); (wall, thread CPU) seconds per event."""
    state = predictor.zero_state(1)
    times = []
    for token in tokens:
        if token == BOS_ID:  # a new message: the keyboard starts from the zero state
            state = predictor.zero_state(1)
        t0, c0 = time.perf_counter(), time.thread_time()
        _, state = predictor.step(np.array([token], np.int64), state)
        times.append((time.perf_counter() - t0, time.thread_time() - c0))
    return times


def token_latency(bundle: Bundle, role: str, tokens: np.ndarray) -> tuple[float, float, float]:
    """p50 and p95 wall milliseconds of one keyboard event on one thread, and the p95 of its CPU time (one
    intra-op thread runs in the caller's thread; on a loaded machine the wall p95 also counts waiting)."""
    predictor = OnnxPredictor.from_bundle(bundle, role, intra_op_threads=1)
    ms = 1000 * np.array(keyboard_events(predictor, tokens)[20:])  # skip warm-up
    return float(np.percentile(ms[:, 0], 50)), float(np.percentile(ms[:, 0], 95)), float(np.percentile(ms[:, 1], 95))


def _session_growth_mb(bundle_dir: Path, role: str, tokens: np.ndarray) -> float:
    with PeakRss() as mem:
        keyboard_events(OnnxPredictor.from_bundle(load_bundle(bundle_dir), role, intra_op_threads=1), tokens)
    return mem.growth_mb


def session_memory_mb(bundle_dir: Path, role: str, tokens: np.ndarray) -> float:
    """Peak RSS growth of creating the predict session and running the events, in a fresh process (a
    session created after others would reuse their freed heap)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_session_growth_mb, bundle_dir, role, tokens).result()


def bench_preset(
    preset: str,
    ckpt: Checkpoint,
    out: Path,
    held: tuple[np.ndarray, ...],
    train_rows: tuple[np.ndarray, ...],
    s: Settings,
) -> dict[str, float]:
    t0 = time.perf_counter()
    export_bundle(ckpt, out, overwrite=True)
    export_s = time.perf_counter() - t0
    bundle = load_bundle(out)
    size = {name: e.size / MB for name, e in bundle.manifest.files.items()}
    top1, acc32, acc8 = agreement(bundle, held)
    stream = held[0][held[2] > 0][: s.latency_tokens]
    p50_32, p95_32, cpu_32 = token_latency(bundle, "predict", stream)
    p50_8, p95_8, cpu_8 = token_latency(bundle, "predict_int8", stream)
    mem_32, mem_8 = (session_memory_mb(out, role, stream[:100]) for role in ("predict", "predict_int8"))

    batch = tuple(a[: s.step_batch] for a in train_rows)
    feeds = {
        "weights": bundle.weights,
        "tokens": batch[0],
        "targets": batch[1],
        "mask": batch[2],
        "lr": np.array(0.1, np.float32),
        "clip": np.array(1.0, np.float32),
    }
    with PeakRss() as onnx_mem:  # session creation and two steps
        session = make_session(out / "train_step.onnx")
        for _ in range(2):
            session.run(None, feeds)

    model = CifgLstm(ckpt.model.config)
    model.load_state_dict(ckpt.model.state_dict())
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    tb = tuple(torch.from_numpy(a) for a in batch)

    def torch_step() -> None:
        sgd.zero_grad()
        total, count = model.loss(*tb)
        (total / count.clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        sgd.step()

    with PeakRss() as torch_mem:
        for _ in range(2):
            torch_step()
    flat, shapes = torch.from_numpy(bundle.weights), ckpt.model.config.param_shapes()
    lr, clip = torch.tensor(0.1), torch.tensor(1.0)
    step_ms = interleaved_median_ms(
        {
            "onnx": lambda: session.run(None, feeds),
            "torch": torch_step,
            "func": lambda: sgd_step(flat, *tb, lr, clip, shapes),
        },
        s.step_reps,
    )
    onnx_ms, torch_ms, func_ms = step_ms["onnx"], step_ms["torch"], step_ms["func"]

    phone = Batches.from_rows(*(a[: 4 * s.step_batch] for a in train_rows), batch_size=s.step_batch)
    kwargs = {"steps": s.local_steps, "lr": 0.1, "grad_clip": 1.0, "delta_clip": 0.5}
    local_session = make_session(out / "local_update.onnx")
    config = ckpt.model.config
    local_ms = interleaved_median_ms(
        {
            "onnx": lambda: local_update_onnx(local_session, bundle.weights, phone, **kwargs),
            "torch": lambda: local_update_torch(config, bundle.weights, phone, **kwargs),
        },
        2,
    )
    local_onnx_ms, local_torch_ms = local_ms["onnx"], local_ms["torch"]

    m = bundle.manifest
    print(
        f"\n== preset {preset}: {m.model.num_parameters:,} parameters, vocab {m.model.vocab_size}, "
        f"seq_len {m.seq_len} (export {export_s:.1f} s)"
    )
    print("  files (MB):  " + "  ".join(f"{n} {v:.3f}" for n, v in size.items()))
    print(
        f"  held-out next piece: top-1 fp32 {acc32:.4f}  int8 {acc8:.4f}  int8/fp32 agreement {top1:.4f} "
        f"({int((held[2] > 0).sum()):,} positions)"
    )
    print(
        f"  per token, 1 thread: fp32 p50 {p50_32:.3f} ms p95 {p95_32:.3f} ms (CPU p95 {cpu_32:.3f} ms; session "
        f"peak RSS +{mem_32:.1f} MB) | int8 p50 {p50_8:.3f} ms p95 {p95_8:.3f} ms (CPU p95 {cpu_8:.3f} ms; "
        f"+{mem_8:.1f} MB; session config {bundle.session_config('predict_int8')})"
    )
    print(
        f"  train step, batch {s.step_batch}x{bundle.manifest.seq_len}, 1 thread: onnx {onnx_ms:.2f} ms "
        f"(peak RSS +{onnx_mem.growth_mb:.1f} MB) | torch eager autograd {torch_ms:.2f} ms "
        f"(peak RSS +{torch_mem.growth_mb:.1f} MB) | torch.func step {func_ms:.2f} ms"
    )
    print(
        f"  local update, K={s.local_steps} over {phone.tokens.shape[0]} batches: "
        f"onnx {local_onnx_ms:.1f} ms | torch {local_torch_ms:.1f} ms"
    )
    return {"int8_mb": size["predict.int8.onnx"], "top1": top1, "p95": p95_8, "ratio": onnx_ms / min(torch_ms, func_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short training and fewer repetitions (< 1 min)")
    parser.add_argument(
        "--checkpoint", type=Path, help="use this checkpoint (and its tokenizer and seq_len) for its preset"
    )
    parser.add_argument("--out", type=Path, help="keep the bundles here (default: a temporary directory)")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    started = time.perf_counter()
    # One thread throughout: it is the on-device setting, and two threads on a shared two-core machine
    # were 5-30x slower under contention.
    torch.set_num_threads(1)
    train_msgs, held_msgs = split_users(chitchat_by_user())
    rng = np.random.default_rng(0)
    train_msgs = [train_msgs[i] for i in rng.permutation(len(train_msgs))[: s.train_messages]]
    ckpt = Checkpoint.load(args.checkpoint) if args.checkpoint else None
    if ckpt is not None:
        tok, seq_len = ckpt.tokenizer, ckpt.seq_len
    else:
        tok, seq_len = train_tokenizer(train_msgs[: s.tokenizer_messages], vocab_size=8192), s.seq_len
    train_rows = rows(tok, train_msgs, seq_len)
    held = rows(tok, held_msgs[: s.eval_messages], seq_len)
    print(
        f"chitchat: {len(train_msgs):,} train / {len(held_msgs):,} held-out messages; "
        f"tokenizer {tok.vocab_size} pieces ({time.perf_counter() - started:.1f} s)"
    )
    root = args.out or Path(tempfile.mkdtemp(prefix="fedkey-bench-"))
    results = {}
    for preset in s.presets:
        config = ModelConfig(preset=preset, vocab_size=tok.vocab_size).resolved()
        if ckpt is not None and ckpt.model.config == config:
            preset_ckpt = ckpt
        else:
            model = CifgLstm(config, seed=0)
            seen = train_briefly(model, train_rows, s.train_seconds[preset])
            print(f"{preset}: trained {s.train_seconds[preset]:.0f} s ({seen:,} tokens)")
            preset_ckpt = Checkpoint(model, tok, seq_len=seq_len, model_version=0)
        results[preset] = bench_preset(preset, preset_ckpt, root / preset, held, train_rows, s)
    print(f"\ntotal {time.perf_counter() - started:.1f} s; bundles in {root}")
    d = results["default"]
    print(
        f"RESULT predict_int8_mb={d['int8_mb']:.3f} top1_agreement={d['top1']:.4f} "
        f"token_p95_ms={d['p95']:.3f} step_onnx_over_torch={d['ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
