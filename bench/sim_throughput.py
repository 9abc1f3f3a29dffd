"""Simulation throughput: fedkey's phone hosts vs plain Flower vs a plain torch loop, side by side.

Three engines train the same phones with the same model and local work (issue 5, "Speed"): chitchat
training users with >= 20 messages, each phone on its user's first 64 messages cut into 20-piece
windows, 1 local epoch of SGD with batch 16 (the phone host's batches: ``PhoneHost.phone_batches``),
the default model preset, every phone of the cohort trained every round:

- ``fedkey``: ``fedkey simulate`` itself (``fedkey.simulate.run_local``: Flower's simulation engine
  with the fedkey ServerApp and strategy, the phone-host ClientApp, the default update pipeline),
  with all phones always eligible, no dropouts and no deadline, so each round trains the cohort.
  Phones/s from ``RUN/metrics.jsonl``: wall time of the rounds after the first, before the last
  (the last one includes the held-out evaluation).
- ``flower``: plain Flower 1.42 (message API): one virtual SuperNode per phone, a ClientApp that
  loads the global ``CifgLstm`` state dict, trains with ``torch.optim.SGD`` (:func:`train_plain`) and
  returns the weights, Flower's own ``FedAvg``, ``run_simulation`` with Ray. Rounds after the first.
- ``floor``: the plain way: a Python loop over the cohort training each phone in turn with
  :func:`train_plain`, then the weighted mean. Rounds after the first.

Every engine runs in its own child process; the parent samples the resident memory of the child's
whole process tree (Ray's processes included) with psutil and reports its peak (shared pages count
once per process). It also measures this machine's fp32 matmul peak with torch on the same thread
count, and counts the training FLOPs of counted (unpadded) positions with
``fedkey.simulate.train_flops_per_position``; the "nominal" figure counts every position of every
batch, padding included (the round-time model's count). ``--cpus`` (default 1) sets the CPUs every
engine may use: phone hosts (fedkey), Ray CPUs (Flower, one per ClientApp) and torch threads (floor).

    .venv/bin/python bench/sim_throughput.py [--quick] [--cohort N] [--cpus C]

Last line: ``RESULT speedup_vs_flower=… speedup_vs_floor=… phones_per_s=… mem_vs_floor=… peak_frac=…``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from fedkey.device_sim.federated_data import FederatedData
from fedkey.device_sim.phone_host import HostTask, PhoneHost, host_for
from fedkey.models.cifg_lstm import CifgLstm
from fedkey.models.onnx_local_update import Batches
from fedkey.simulate import backend_config, build_setup, config_from_run_config, train_flops_per_position

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


def train_plain(model: CifgLstm, batches: Batches, steps: int, lr: float, grad_clip: float) -> None:
    """One phone's local epoch written the plain torch way: module, autograd, clip, SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tokens, targets = torch.from_numpy(batches.tokens), torch.from_numpy(batches.targets)
    mask = torch.from_numpy(batches.mask)
    for k in range(steps):
        i = k % len(tokens)
        total, count = model.loss(tokens[i], targets[i], mask[i])
        opt.zero_grad()
        (total / torch.clamp(count, min=1.0)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()


def phone_work(host: PhoneHost, phone: int, round_idx: int) -> tuple[Batches, int, int, int]:
    """(batches, steps, examples, tokens) of a phone in a round: the phone host's own data path."""
    seed = int(host.population.phone_seeds(np.array([phone]), round_idx)[0])
    return host.phone_batches(int(host.population.user_of(np.array([phone]))[0]), seed)


# --- engines (each runs in a child process and writes a JSON result) ---------------------------------


def engine_floor(config: Mapping[str, Any]) -> dict[str, Any]:
    """A loop over the cohort, each phone trained in turn, then the weighted mean; rounds after the first."""
    setup = build_setup(config_from_run_config(config).config, config["data-dir"])
    task, sim = setup.task, setup.config.simulate
    host = PhoneHost(task)
    model = CifgLstm(setup.model_config, seed=sim.seed)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    times, useful, nominal = [], 0, 0
    for rnd in range(1, sim.rounds + 1):
        t0 = time.perf_counter()
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        examples_sum = 0
        useful = nominal = 0
        for phone in range(sim.cohort_size):
            batches, steps, examples, tokens = phone_work(host, phone, rnd)
            model.load_state_dict(global_state)
            train_plain(model, batches, steps, task.lr, task.grad_clip)
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    total[k] += examples * v
            examples_sum += examples
            useful += tokens
            nominal += steps * task.batch_size * task.seq_len
        global_state = {k: v / examples_sum for k, v in total.items()}
        times.append(time.perf_counter() - t0)
    return {
        "phones": sim.cohort_size * (sim.rounds - 1),
        "seconds": sum(times[1:]),
        "positions_useful": useful,
        "positions_nominal": nominal,
        "agreement": agreement(setup, host),
        "flops_per_position": train_flops_per_position(setup.model_config),
    }


def agreement(setup: Any, host: PhoneHost) -> float:
    """Relative L2 difference of one phone's delta: the plain loop vs fedkey's batched trainer."""
    from fedkey.device_sim.batched_training import train_phones

    task = setup.task
    batches, steps, _, _ = phone_work(host, 0, 1)
    model = CifgLstm(setup.model_config, seed=setup.config.simulate.seed)
    start = [p.detach().clone() for p in model.param_dict().values()]
    train_plain(model, batches, steps, task.lr, task.grad_clip)
    plain = torch.cat([(p.detach() - s).reshape(-1) for p, s in zip(model.param_dict().values(), start, strict=True)])
    batched = train_phones(
        setup.model_config,
        setup.initial_weights,
        [batches],
        [steps],
        lr=task.lr,
        grad_clip=task.grad_clip,
        delta_clip=0,
    )
    fast = torch.from_numpy(batched.deltas[0])
    return float(torch.linalg.vector_norm(plain - fast) / torch.linalg.vector_norm(plain))


def engine_fedkey(config: Mapping[str, Any]) -> dict[str, Any]:
    """``fedkey simulate`` in-process (Flower simulation engine, Ray); rounds 2 .. R-1 from metrics.jsonl."""
    from fedkey.simulate import run_local

    run_local(config)
    lines = [json.loads(x) for x in (Path(config["out"]) / "metrics.jsonl").read_text().splitlines()]
    timed = lines[1:-1]
    return {
        "phones": sum(x["reported"] for x in timed),
        "seconds": timed[-1]["wall_time_s"] - lines[0]["wall_time_s"],
        "selected": [x["selected"] for x in lines],
    }


def engine_flower(config: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Flower: a SuperNode per phone, a torch ClientApp returning weights, FedAvg; rounds after the first."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    setup = build_setup(config_from_run_config(config).config, config["data-dir"])
    sim, task_record = setup.config.simulate, setup.task.to_config()
    n, rounds = sim.cohort_size, sim.rounds

    client = ClientApp()

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        task = HostTask.from_config(task_record)
        host = host_for(task)
        batches, steps, examples, _ = phone_work(
            host, int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"])
        )
        model = CifgLstm(task.model)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        train_plain(model, batches, steps, task.lr, task.grad_clip)
        reply = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": examples})}
        )
        return Message(content=reply, reply_to=msg)

    stamps: list[float] = []
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        initial = ArrayRecord(CifgLstm(setup.model_config, seed=sim.seed).state_dict())

        def stamp(rnd: int, arrays: ArrayRecord) -> None:
            stamps.append(time.perf_counter())

        strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=stamp)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=n,
        backend_name="ray",
        backend_config=backend_config(setup.config),  # type: ignore[arg-type]
    )
    # stamps: before round 1, after each round
    return {"phones": n * (rounds - 1), "seconds": stamps[-1] - stamps[1]}


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


def matmul_peak(threads: int, size: int = 2048, reps: int = 8) -> float:
    """Best fp32 GFLOP/s of a square torch matmul on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_engine(engine: str, config: Mapping[str, Any], cpus: int, log: Path) -> tuple[dict[str, Any], int]:
    """Run one engine in a child process; returns its result and the peak RSS of its process tree."""
    result = Path(config["out"]) / "result.json"
    cmd = [sys.executable, __file__, "--engine", engine, "--config", json.dumps(config), "--cpus", str(cpus)]
    with log.open("w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, tree_rss(proc))
            time.sleep(0.05)
    if child.returncode != 0 or not result.is_file():
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"engine {engine} failed (exit {child.returncode}):\n{tail}")
    return json.loads(result.read_text()), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="cohort 24 instead of 200 (the same measurement)")
    parser.add_argument("--cohort", type=int, default=None, help="phones per round (default 200, 24 with --quick)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each engine may use (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="which phones")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.cpus)
    if args.engine:
        config = json.loads(args.config)
        result = {"floor": engine_floor, "fedkey": engine_fedkey, "flower": engine_flower}[args.engine](config)
        (Path(config["out"]) / "result.json").write_text(json.dumps(result))
        return

    cohort = args.cohort or (24 if args.quick else 200)
    work = Path(tempfile.mkdtemp(prefix="fedkey-sim-throughput-"))
    try:
        data_dir = work / "data"
        subset_data(DATA, data_dir, cohort, args.seed)
        peak = matmul_peak(args.cpus)
        print(f"cohort {cohort} phones (chitchat, >= {MIN_MESSAGES} messages), {args.cpus} CPU(s)")
        print(f"fp32 matmul peak {peak:.1f} GFLOP/s")
        results: dict[str, tuple[dict[str, Any], int]] = {}
        for engine in ENGINES:
            rounds = 3 if engine == "fedkey" else 2
            config = run_config(data_dir, work / engine, cohort, rounds, args.cpus)
            (work / engine).mkdir()
            results[engine] = run_engine(engine, config, args.cpus, work / f"{engine}.log")
        print(f"matmul peak again after the engines: {matmul_peak(args.cpus):.1f} GFLOP/s (load drift)")
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
    print(f"agreement: plain loop vs fedkey batched trainer, one phone's delta, relative L2 {floor['agreement']:.1e}")
    rate, mem, frac = {}, {}, {}
    print(f"{'engine':8} {'phones/s':>9} {'peak MB':>8} {'GFLOP/s':>8} {'of peak':>8} {'nominal':>8}")
    for engine, (res, rss) in results.items():
        rate[engine] = res["phones"] / res["seconds"]
        mem[engine] = rss / 1e6
        gflops = rate[engine] * useful / 1e9
        frac[engine] = gflops / peak
        print(
            f"{engine:8} {rate[engine]:9.2f} {mem[engine]:8.0f} {gflops:8.1f} {frac[engine]:8.0%} "
            f"{rate[engine] * nominal / 1e9 / peak:8.0%}"
        )
    print(
        f"RESULT speedup_vs_flower={rate['fedkey'] / rate['flower']:.2f} "
        f"speedup_vs_floor={rate['fedkey'] / rate['floor']:.2f} phones_per_s={rate['fedkey']:.2f} "
        f"mem_vs_floor={mem['fedkey'] / mem['floor']:.2f} peak_frac={frac['fedkey']:.2f}"
    )


if __name__ == "__main__":
    main()
