"""Where the phone host's trainer spends its time, and how close each part runs to the matmul peak.

``bench/sim_throughput.py`` reports the achieved training GFLOP/s of whole engines as a fraction of
this machine's fp32 matmul peak. This script explains that fraction: it trains the same phones
(chitchat users with >= 20 messages, their first 64 messages in 20-piece windows, batch 16, one
epoch, the default model, one torch thread) with ``device_sim.batched_training.train_phones`` under
``torch.profiler`` (FLOPs recorded for the matmul ops) and groups the CPU time by part:

- ``softmax matmuls``: the tied 8192-way output layer (logits, and the gradients of the projected
  outputs and of the embedding), inside the fused loss;
- ``recurrence matmuls``: the CIFG cell's input projection of all steps, its per-step recurrent
  products (16 rows each: one batch) and the weight gradients;
- ``elementwise and other``: gates, softmax exponentials, masks, gathers, copies and the per-op
  dispatch cost of everything else.

The trainer and the plain torch loop of ``bench/sim_throughput.py`` (the floor) train the same phones in
turn, twice each after a warm-up (the best CPU time of each counts), then the trainer once more under
the profiler. Each matmul part's time is the profiler's (its few microseconds per op are small next to
0.1-2 ms matmuls); "elementwise and other" is the rest of the timed run's CPU time (the profiler's per-
op cost would inflate its tens of thousands of small ops). The softmax matmuls' FLOPs are counted from
the shapes (three products of 2 * V * E per counted position, plus the bias gradient's matrix-vector
product), the recurrence's by the profiler (padded positions included: it computes them). The
trainer's useful rate counts only counted positions, as sim_throughput does. The matmul peak is the best
of measurements taken before and after the runs.

    .venv/bin/python bench/trainer_profile.py [--quick] [--phones N] [--against REV]

``--against REV`` also trains the same phones with the trainer of an earlier git revision (its
``device_sim/batched_training.py``), alternately with the current one, best of 4 each: the machine's
speed drifts by 10-15% over minutes, so a change is judged side by side, not across runs.

Last line: ``RESULT trainer_peak_frac=… matmul_only_frac=… speedup_vs_plain=… softmax_mm_frac=…
recurrence_mm_frac=… other_share=… [cpu_vs_against=…]`` (matmul_only_frac: the trainer's useful GFLOP/s
over its matmul time alone, as a fraction of the peak: the most it could reach if everything but its
matmuls took no time; speedup_vs_plain: CPU time of sim_throughput's plain torch loop on the same phones
over the trainer's; the matmul parts' GFLOP/s as fractions of the peak; other_share: elementwise and
other, of all CPU time; cpu_vs_against, with ``--against``: the current trainer's CPU time over the
earlier one's).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from plain_engines import matmul_peak, phone_work, train_plain
from sim_throughput import DATA, run_config, subset_data
from torch.profiler import ProfilerActivity, profile

from fedkey.device_sim.batched_training import train_phones
from fedkey.device_sim.host_runtime import PhoneHost
from fedkey.models.cifg_lstm import CifgLstm, initial_weights
from fedkey.simulate import build_setup, config_from_run_config, train_flops_per_position

SOFTMAX_OPS = {"aten::addmm", "aten::mm", "aten::mv"}  # the fused loss's products (logits, gradients)
RECURRENCE_OPS = {"aten::bmm", "aten::baddbmm"}  # the cell's batched products (phones stacked)


def part_of(op: str) -> str:
    if op in SOFTMAX_OPS:
        return "softmax matmuls"
    if op in RECURRENCE_OPS:
        return "recurrence matmuls"
    return "elementwise and other"


def best_cpu_seconds(*runs: Callable[[], None], repeats: int = 2) -> list[float]:
    """Each run's best CPU time over ``repeats`` rounds of all runs in turn (others' load hits them alike)."""
    best = [math.inf] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            t0 = time.process_time()
            run()
            best[i] = min(best[i], time.process_time() - t0)
    return best


def trainer_at(rev: str, work: Path) -> Callable[..., object]:
    """``train_phones`` of ``device_sim/batched_training.py`` as of git revision ``rev``, loaded from a copy."""
    source = subprocess.run(
        ["git", "show", f"{rev}:device_sim/batched_training.py"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = work / "batched_training_earlier.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("batched_training_earlier", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_phones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 phones instead of 40 (the same measurement)")
    parser.add_argument("--phones", type=int, default=None, help="phones trained (default 40, 8 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="which phones")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also time device_sim/batched_training.py as of this git revision, alternately with the current one",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = args.phones or (8 if args.quick else 40)
    work = Path(tempfile.mkdtemp(prefix="fedkey-trainer-profile-"))
    try:
        subset_data(DATA, work / "data", n, args.seed)
        config = config_from_run_config(run_config(work / "data", work / "run", n, 1, 1)).config
        setup = build_setup(config, work / "data")
        task, host = setup.task, PhoneHost(setup.task)
        phones = [phone_work(host, p, 1) for p in range(n)]

        def train(trainer: Callable[..., object] = train_phones) -> None:
            trainer(
                setup.model_config,
                initial_weights(setup.model_config, setup.config.simulate.seed),
                [b for b, _, _, _ in phones],
                [steps for _, steps, _, _ in phones],
                lr=task.lr,
                grad_clip=task.grad_clip,
                delta_clip=0.0,
                group=setup.config.simulate.phone_group,
            )

        peak = matmul_peak(1)
        model = CifgLstm(setup.model_config, seed=setup.config.simulate.seed)

        def plain() -> None:
            for batches, steps, _, _ in phones:
                train_plain(model, batches, steps, task.lr, task.grad_clip)

        train()  # warm-up: allocator, MKL's first calls
        cpu_s, plain_s = best_cpu_seconds(train, plain)
        if args.against:
            earlier = trainer_at(args.against, work)
            train(earlier)
            now_s, earlier_s = best_cpu_seconds(train, lambda: train(earlier), repeats=4)
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            train()
        peak = max(peak, matmul_peak(1))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    counted = sum(tokens for _, _, _, tokens in phones)
    useful = counted * train_flops_per_position(setup.model_config)
    vocab, embed = setup.model_config.param_shapes()["embedding"]
    seconds: dict[str, float] = defaultdict(float)
    flops: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in prof.key_averages():
        part = part_of(event.key)
        seconds[part] += event.self_cpu_time_total / 1e6
        calls[part] += event.count
        if part == "recurrence matmuls":
            flops[part] += event.flops
    # counted from the shapes, not by the profiler (which counts no FLOPs for some out= variants): the
    # fused loss's three products have 2 * V * E multiply-adds each per counted position, no other rows
    flops["softmax matmuls"] = 3 * 2 * vocab * embed * counted
    # the profiler adds a few microseconds to every op: fine for the matmuls (0.1-2 ms each), not for
    # the tens of thousands of small elementwise ops, so their time is the unprofiled total's remainder
    seconds["elementwise and other"] = cpu_s - seconds["softmax matmuls"] - seconds["recurrence matmuls"]
    rate = useful / cpu_s / 1e9
    print(f"{n} phones, {useful / 1e9:.1f} GFLOP of training at counted positions; matmul peak {peak:.1f} GFLOP/s")
    print(f"trainer: {cpu_s / n * 1e3:.0f} ms CPU per phone, {rate:.1f} GFLOP/s = {rate / peak:.0%} of peak")
    print(f"plain torch loop (sim_throughput's floor): {plain_s / n * 1e3:.0f} ms CPU per phone")
    print(f"{'part':24} {'share':>6} {'calls':>7} {'GFLOP/s':>8} {'of peak':>7}")
    frac: dict[str, float] = {}
    for part in ("softmax matmuls", "recurrence matmuls", "elementwise and other"):
        part_rate = flops[part] / seconds[part] / 1e9 if flops[part] else 0.0
        frac[part] = part_rate / peak
        shown = f"{part_rate:8.1f} {frac[part]:7.0%}" if flops[part] else f"{'-':>8} {'-':>7}"
        print(f"{part:24} {seconds[part] / cpu_s:6.0%} {calls[part]:7d} {shown}")
    # the bound the matmuls alone set: the rate if everything else took no time at all
    matmul_only = useful / (seconds["softmax matmuls"] + seconds["recurrence matmuls"]) / 1e9
    print(f"with nothing but its matmuls: {matmul_only:.1f} GFLOP/s = {matmul_only / peak:.0%} of peak")
    against = ""
    if args.against:
        print(f"side by side with {args.against}'s trainer (best of 4 each): {now_s / earlier_s:.3f}x its CPU time")
        against = f" cpu_vs_against={now_s / earlier_s:.3f}"
    print(
        f"RESULT trainer_peak_frac={rate / peak:.2f} matmul_only_frac={matmul_only / peak:.2f} "
        f"speedup_vs_plain={plain_s / cpu_s:.2f} "
        f"softmax_mm_frac={frac['softmax matmuls']:.2f} "
        f"recurrence_mm_frac={frac['recurrence matmuls']:.2f} "
        f"other_share={seconds['elementwise and other'] / cpu_s:.2f}{against}"
    )


if __name__ == "__main__":
    main()
