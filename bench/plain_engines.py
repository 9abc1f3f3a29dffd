"""The baselines of ``sim_throughput.py``, in their own module because they need torch: the plain torch
loop (the floor), plain Flower with a torch ClientApp, the check that the plain loop and fedkey's
trainer compute the same update, and the fp32 matmul peak.

``sim_throughput.py`` imports this module only in processes that run one of these: its fedkey engine's
process is the server process of ``fedkey simulate``, which does not load torch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedkey.device_sim.host_runtime import PhoneHost, host_for
from fedkey.device_sim.phone_host import HostTask
from fedkey.models.cifg_lstm import CifgLstm, initial_weights
from fedkey.models.onnx_local_update import Batches
from fedkey.simulate import backend_config, build_setup, config_from_run_config, train_flops_per_position


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
    """A loop over the cohort, each phone trained in turn, then the weighted mean; one round, timed.

    Warm-up first: one phone trained, and every phone's tokenised data (which the other engines cache
    in their first round).
    """
    setup = build_setup(config_from_run_config(config).config, config["data-dir"])
    task, sim = setup.task, setup.config.simulate
    host = PhoneHost(task)
    for phone in range(sim.cohort_size):
        phone_work(host, phone, 1)
    batches, steps, _, _ = phone_work(host, 0, 1)
    train_plain(CifgLstm(setup.model_config, seed=sim.seed), batches, steps, task.lr, task.grad_clip)
    model = CifgLstm(setup.model_config, seed=sim.seed)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    total = {k: torch.zeros_like(v) for k, v in global_state.items()}
    examples_sum = useful = nominal = 0
    for phone in range(sim.cohort_size):
        batches, steps, examples, tokens = phone_work(host, phone, 1)
        model.load_state_dict(global_state)
        train_plain(model, batches, steps, task.lr, task.grad_clip)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                total[k] += examples * v
        examples_sum += examples
        useful += tokens
        nominal += steps * task.batch_size * task.seq_len
    global_state = {k: v / examples_sum for k, v in total.items()}
    return {
        "phones": sim.cohort_size,
        "window": [t0, time.perf_counter()],
        "positions_useful": useful,
        "positions_nominal": nominal,
        "flops_per_position": train_flops_per_position(setup.model_config),
    }


def agreement(config: Mapping[str, Any]) -> float:
    """Relative L2 difference of one phone's delta: the plain loop vs fedkey's batched trainer (run in
    its own process, so that neither engine's memory peak counts the other's trainer)."""
    from fedkey.device_sim.batched_training import train_phones

    setup = build_setup(config_from_run_config(config).config, config["data-dir"])
    task, host = setup.task, PhoneHost(setup.task)
    batches, steps, _, _ = phone_work(host, 0, 1)
    model = CifgLstm(setup.model_config, seed=setup.config.simulate.seed)
    start = [p.detach().clone() for p in model.param_dict().values()]
    train_plain(model, batches, steps, task.lr, task.grad_clip)
    plain = torch.cat([(p.detach() - s).reshape(-1) for p, s in zip(model.param_dict().values(), start, strict=True)])
    batched = train_phones(
        setup.model_config,
        initial_weights(setup.model_config, setup.config.simulate.seed),
        [batches],
        [steps],
        lr=task.lr,
        grad_clip=task.grad_clip,
        delta_clip=0,
    )
    fast = torch.from_numpy(batched.deltas[0])
    return float(torch.linalg.vector_norm(plain - fast) / torch.linalg.vector_norm(plain))


def engine_flower(config: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Flower: a SuperNode per phone, a torch ClientApp returning weights, Flower's FedAvg."""
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
    return {"phones": n * (rounds - 1), "window": [stamps[1], stamps[-1]]}


def matmul_peak(threads: int, size: int = 2048, reps: int = 8) -> float:
    """Best fp32 GFLOP per CPU-second of a square torch matmul on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.process_time()
        a @ b
        best = max(best, 2 * size**3 / (time.process_time() - t0) / 1e9)
    return best
