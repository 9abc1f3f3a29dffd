"""Simulation throughput: fedkey's phone hosts vs plain Flower vs a plain torch loop, side by side.

Three engines train the same phones with the same model and local work (issue 5, "Speed"): chitchat
training users with >= 20 messages, each phone on its user's first 64 messages cut into 20-piece
windows, 1 local epoch of SGD with batch 16 (the phone host's batches: ``PhoneHost.phone_batches``),
the default model preset, every phone of the cohort trained every round:

- ``fedkey``: ``fedkey simulate`` itself (``fedkey.simulate.run_local``: Flower's simulation engine
  with the fedkey ServerApp and strategy, the phone-host ClientApp, the default update pipeline),
  with all phones always eligible, no dropouts and no deadline, so each round trains the cohort.
  Timed: the rounds after the first (which starts Ray and loads the data); round ends are when
  ``RUN/metrics.jsonl`` gains a line.
- ``flower``: plain Flower 1.42 (message API): one virtual SuperNode per phone, a ClientApp that
  loads the global ``CifgLstm`` state dict, trains with ``torch.optim.SGD`` (``plain_engines.train_plain``) and
  returns the weights, Flower's own ``FedAvg``, ``run_simulation`` with Ray. Timed: the rounds
  after the first.
- ``floor``: the plain way: a Python loop over the cohort training each phone in turn with
  ``plain_engines.train_plain``, then the weighted mean. Timed: one round after a warm-up.

The two baselines and the agreement check live in ``plain_engines.py`` (torch); this module does not
import torch, so the fedkey engine's process is what ``fedkey simulate``'s is: a server process without
torch (the run prints whether it loaded it).

Every engine runs in its own child process (floor and fedkey ``--repeats`` times, alternately, each
keeping its fastest run and its highest memory peak; flower once); the parent samples the memory of
the child's whole process tree (Ray's processes included) and reports its peak footprint, each shared
page counted once (``tree_memory.py``; the RSS summed over the tree, which counts torch's libraries and
Ray's object store once per process, is printed beside it). The child samples its tree's CPU time
(user + system, every 50 ms) over the timed window. Throughput is reported per CPU-second of the
engine's whole process tree (server, Ray's processes and workers included): with ``--cpus 1`` an
engine that has its CPU to itself does that many phones per wall second, and on a machine shared with
other jobs (this one: 2 cores, several sessions) wall time mostly measures the other jobs, CPU time
much less. Wall-clock phones/s and the CPUs each engine kept busy are printed too. Idle waits (an
engine sleeping between polls) cost wall time but no CPU time, which favours the Flower engines, not
the floor.

The fp32 matmul peak is measured in the same run with torch on the same thread count (best of 8
2048x2048 products, GFLOP per CPU-second, before and after the engines: the better of the two);
achieved training GFLOP count only counted (unpadded) positions,
``fedkey.simulate.train_flops_per_position`` each; "nominal" counts every position of every batch,
padding included (the round-time model's count). ``bench/trainer_profile.py`` splits the phone host
trainer's time into its matmuls and the rest. ``--cpus`` (default 1) sets the CPUs
every engine may use: phone hosts (fedkey), Ray CPUs (Flower, one per ClientApp), torch threads.

    .venv/bin/python bench/sim_throughput.py [--quick] [--cohort N] [--cpus C] [--repeats R]

Last line (per CPU-second): ``RESULT speedup_vs_flower=… speedup_vs_floor=… phones_per_s=… mem_vs_floor=…
peak_frac=… peak_frac_nominal=…``: ``peak_frac`` counts the positions trained, ``peak_frac_nominal``
every position of every batch, padding included, as the issue's calibration figure for the floor does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tree_memory import TreeMemory, process_tree, watch_peak

from fedkey.device_sim.federated_data import FederatedData

ENGINES = ("floor", "fedkey", "flower")
MIN_MESSAGES = 20
DATA = Path("data/chitchat")


def run_config(data_dir: Path, out: Path, cohort: int, rounds: int, cpus: int) -> dict[str, Any]:
    """The run_config every engine builds its settings from (fedkey simulate's own keys)."""
    return {
        "data-dir": str(data_dir),
        "out": str(out),
        "model.preset": "default",
        "simulate.rounds": rounds,
        "simulate.cohort_size": cohort,
        "simulate.over_selection": 1.0,
        "simulate.deadline_s": 1e9,
        "simulate.local_epochs": 1.0,
        "simulate.local_steps": 0,
        "simulate.local_batch_size": 16,
        "simulate.max_messages_per_phone": 64,
        "simulate.message_selection": "first",
        "simulate.seq_len": 20,
        "simulate.phone_hosts": cpus,
        "simulate.threads": 1,
        "simulate.eval_every": 0,
        "simulate.eval_users": 2,
        "simulate.eval_positions": 50,
        "eval.max_positions": 50,
        "simulate.export_bundle": False,
        "population.availability.peak_probability": 1.0,
        "population.availability.daytime_floor": 1.0,
        "population.devices.dropout_min": 0.0,
        "population.devices.dropout_max": 0.0,
    }


def engine_fedkey(config: Mapping[str, Any]) -> dict[str, Any]:
    """``fedkey simulate`` in-process (Flower simulation engine, Ray); the rounds after the first.

    Round ends are when ``RUN/metrics.jsonl`` gains a line (polled every 20 ms); the last round
    includes a 50-position held-out evaluation (the final full evaluation comes after it).
    """
    from fedkey.simulate import run_local

    metrics = Path(config["out"]) / "metrics.jsonl"
    ends: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            lines = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
            ends.extend([time.perf_counter()] * (lines - len(ends)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_local(config)
    done.set()
    watcher.join()
    lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    return {
        "phones": sum(x["reported"] for x in lines[1:]),
        "window": [ends[0], ends[-1]],
        "server_loaded_torch": "torch" in sys.modules,
    }


# --- the parent: data, matmul peak, engines under a memory sampler, report ------------------------


def subset_data(source: Path, dest: Path, cohort: int, seed: int) -> None:
    """A prepared data folder whose training users are ``cohort`` chitchat users with >= 20 messages."""
    data = FederatedData.load(source)
    eligible = [u for u in data.train_users if len(u.messages) >= MIN_MESSAGES]
    if cohort > len(eligible):
        raise SystemExit(f"only {len(eligible)} training users have >= {MIN_MESSAGES} messages")
    chosen = np.random.default_rng(seed).choice(len(eligible), size=cohort, replace=False)
    users = [eligible[i] for i in chosen] + data.test_users[:2]
    dest.mkdir(parents=True)
    for name in ("lexicon.txt", "tokenizer.model", "stats.json", "prepare.json"):
        shutil.copy(source / name, dest / name)
    with (dest / "users.jsonl").open("w", encoding="utf-8") as handle:
        for u in users:
            handle.write(
                json.dumps({"user": u.user, "split": u.split, "messages": u.messages, "personal": u.personal}) + "\n"
            )


class TreeClock:
    """Samples the CPU seconds (user + system) used so far by this process and its descendants.

    The sampling itself (psutil reads /proc for every process on the machine) is not the engine's
    work: its own thread's CPU time is sampled too and left out.
    """

    def __init__(self, period_s: float = 0.05) -> None:
        self.proc = psutil.Process()
        self.samples: list[tuple[float, float]] = []
        self.seen: dict[int, float] = {}
        self.period_s = period_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            for p in process_tree(self.proc):
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    self.seen[p.pid] = t.user + t.system
            self.samples.append((time.perf_counter(), sum(self.seen.values()) - time.thread_time()))
            time.sleep(self.period_s)

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds spent between two ``time.perf_counter`` instants (nearest samples)."""
        self.done.set()
        self.thread.join()
        times = np.array([t for t, _ in self.samples])
        cpu = np.array([c for _, c in self.samples])
        return float(cpu[np.abs(times - t1).argmin()] - cpu[np.abs(times - t0).argmin()])


def run_engine(engine: str, config: Mapping[str, Any], cpus: int, log: Path) -> tuple[dict[str, Any], TreeMemory]:
    """Run one engine in a child process; returns its result and the peak memory of its process tree."""
    result = Path(config["out"]) / "result.json"
    cmd = [sys.executable, __file__, "--engine", engine, "--config", json.dumps(config), "--cpus", str(cpus)]
    with log.open("w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peak = watch_peak(child)
    if child.returncode != 0 or not result.is_file():
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"engine {engine} failed (exit {child.returncode}):\n{tail}")
    return json.loads(result.read_text()), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="cohort 24 instead of 200, one run per engine (the same measurement)"
    )
    parser.add_argument("--cohort", type=int, default=None, help="phones per round (default 200, 24 with --quick)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each engine may use (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="which phones")
    parser.add_argument(
        "--repeats", type=int, default=None, help="alternated floor and fedkey runs, best counts (2; 1 with --quick)"
    )
    parser.add_argument("--engine", choices=[*ENGINES, "agreement"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine == "fedkey":
        engines: dict[str, Any] = {"fedkey": engine_fedkey}
    else:  # torch here only: the fedkey engine's process is fedkey simulate's server, which does not load it
        import plain_engines
        import torch

        torch.set_num_threads(args.cpus)
        engines = {"floor": plain_engines.engine_floor, "flower": plain_engines.engine_flower}
    if args.engine == "agreement":
        config = json.loads(args.config)
        result = {"agreement": plain_engines.agreement(config)}
        (Path(config["out"]) / "result.json").write_text(json.dumps(result))
        return
    if args.engine:
        config = json.loads(args.config)
        clock = TreeClock()
        result = engines[args.engine](config)
        t0, t1 = result.pop("window")
        result["seconds"], result["cpu_seconds"] = t1 - t0, clock.cpu_between(t0, t1)
        (Path(config["out"]) / "result.json").write_text(json.dumps(result))
        return

    cohort = args.cohort or (24 if args.quick else 200)
    work = Path(tempfile.mkdtemp(prefix="fedkey-sim-throughput-"))
    try:
        data_dir = work / "data"
        subset_data(DATA, data_dir, cohort, args.seed)
        peak = plain_engines.matmul_peak(args.cpus)
        print(f"cohort {cohort} phones (chitchat, >= {MIN_MESSAGES} messages), {args.cpus} CPU(s)")
        print(f"fp32 matmul peak {peak:.1f} GFLOP per CPU-second ({args.cpus} thread(s))")
        (work / "agreement").mkdir()
        checked = run_config(data_dir, work / "agreement", cohort, 1, args.cpus)
        check, _ = run_engine("agreement", checked, args.cpus, work / "agreement.log")
        # floor and fedkey alternate --repeats times and each keeps its fastest run (and its highest
        # peak memory): this machine's speed drifts by 10-15% over minutes (the matmul peak too), and
        # alternating exposes both engines to the drift alike
        repeats = args.repeats or (1 if args.quick else 2)
        order = [e for _ in range(repeats) for e in ENGINES if e != "flower"] + ["flower"]
        best: dict[str, dict[str, Any]] = {}
        peaks: dict[str, TreeMemory] = {}
        for i, engine in enumerate(order):
            folder = work / f"{engine}-{i}"
            config = run_config(data_dir, folder, cohort, 1 if engine == "floor" else 2, args.cpus)
            folder.mkdir()
            res, mem = run_engine(engine, config, args.cpus, work / f"{engine}-{i}.log")
            rate = res["phones"] / res["cpu_seconds"]
            print(
                f"  run {i + 1}/{len(order)}: {engine} {rate:.2f} phones per CPU-second, peak "
                f"{mem.footprint / 1e6:.0f} MB (RSS summed {mem.rss / 1e6:.0f} MB)"
            )
            top = peaks.setdefault(engine, TreeMemory())
            top.rss = max(top.rss, mem.rss)
            if mem.footprint > top.footprint:
                top.at_peak = mem.at_peak
            if engine not in best or rate > best[engine]["phones"] / best[engine]["cpu_seconds"]:
                best[engine] = res
        results = {engine: (best[engine], peaks[engine]) for engine in ENGINES}
        again = plain_engines.matmul_peak(args.cpus)
        print(f"matmul peak again after the engines: {again:.1f} (the better of the two is the peak)")
        peak = max(peak, again)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    floor = results["floor"][0]
    per_position = floor["flops_per_position"]
    useful = floor["positions_useful"] * per_position / cohort  # per phone
    nominal = floor["positions_nominal"] * per_position / cohort
    print(
        f"per phone: {floor['positions_useful'] / cohort:.0f} counted positions "
        f"({floor['positions_nominal'] / cohort:.0f} with padding), {useful / 1e9:.2f} GFLOP of training"
    )
    print(f"agreement: plain loop vs fedkey batched trainer, one phone's delta, relative L2 {check['agreement']:.1e}")
    loaded = results["fedkey"][0]["server_loaded_torch"]
    print(f"fedkey's server process (the engine's own) loaded torch: {'yes' if loaded else 'no'}")
    wall, rate, mem, frac = {}, {}, {}, {}
    print(
        f"{'engine':8} {'phones/s wall':>13} {'CPUs busy':>9} {'phones/CPU-s':>12} {'peak MB':>8} {'RSS sum':>8} "
        f"{'GFLOP/CPU-s':>11} {'of peak':>7} {'nominal':>7}"
    )
    for engine, (res, tree) in results.items():
        wall[engine] = res["phones"] / res["seconds"]
        rate[engine] = res["phones"] / res["cpu_seconds"]
        mem[engine] = tree
        gflops = rate[engine] * useful / 1e9
        frac[engine] = gflops / peak
        print(
            f"{engine:8} {wall[engine]:13.2f} {res['cpu_seconds'] / res['seconds']:9.2f} {rate[engine]:12.2f} "
            f"{tree.footprint / 1e6:8.0f} {tree.rss / 1e6:8.0f} {gflops:11.1f} {frac[engine]:7.0%} "
            f"{rate[engine] * nominal / 1e9 / peak:7.0%}"
        )
    print(
        f"wall-clock basis: speedup_vs_flower={wall['fedkey'] / wall['flower']:.2f} "
        f"speedup_vs_floor={wall['fedkey'] / wall['floor']:.2f} phones_per_s={wall['fedkey']:.2f}"
    )
    print(f"summed-RSS basis: mem_vs_floor={mem['fedkey'].rss / mem['floor'].rss:.2f}")
    print("footprint at each engine's peak, MB: private pages by process, then shared pages (once)")
    for engine, tree in mem.items():
        print(f"  {engine}: {tree.at_peak.describe()}")
    print(
        f"RESULT speedup_vs_flower={rate['fedkey'] / rate['flower']:.2f} "
        f"speedup_vs_floor={rate['fedkey'] / rate['floor']:.2f} phones_per_s={rate['fedkey']:.2f} "
        f"mem_vs_floor={mem['fedkey'].footprint / mem['floor'].footprint:.2f} peak_frac={frac['fedkey']:.2f} "
        f"peak_frac_nominal={frac['fedkey'] * nominal / useful:.2f}"
    )


if __name__ == "__main__":
    main()
