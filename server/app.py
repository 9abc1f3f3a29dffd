"""The Flower ``ServerApp`` of `fedkey simulate`: rounds, held-out evaluation, run outputs, resume.

Loadable as ``fedkey.server.app:app`` (``flwr run .``, deployment mode). It is configured only through
Flower's ``run_config`` (see ``fedkey.simulate.config_from_run_config``): ``out`` (run folder),
``data-dir`` (prepared data), optional ``config-file`` (fedkey TOML), ``resume`` (bool), ``progress``
(bool: a Rich progress bar instead of log lines) and any dotted config key as an override, e.g.
``simulate.rounds = 5`` (``[tool.flwr.app.config.simulate]`` in pyproject.toml flattens to that).
The data, population and phone-host task are built by the ``fedkey.simulate`` glue (the server never
imports ``device_sim``).

Each round runs :class:`~fedkey.server.strategy.FleetStrategy`'s ``configure_train`` ->
messages out (parts of at most ``simulate.phones_per_message`` phones, at least one per phone host),
replies decoded as they come -> ``aggregate_round``; every ``eval_every``
rounds one phone host evaluates the global model on a seeded sample of held-out users
(``configure_evaluate`` / ``aggregate_evaluate``). The server process holds the weights as numpy and
never imports torch (250 MB per process): a phone host gives the initial weights and evaluates,
checkpoints are written torch-free (``models.checkpoint_file``), and the final bundle is exported by
a ``fedkey export`` child process. Outputs in the run folder:

    config.toml        effective configuration
    metrics.jsonl      one line per round: round, sim_time_s, wall_time_s (both cumulative since the
                       run began), selected, reported, dropped, stragglers, rejected, bytes_up,
                       bytes_down, loss, recall@1, recall@3 (null without evaluation), epsilon, delta
    checkpoint.pt      models.checkpoint_file format; meta holds the round, the clock and the strategy state
                       (server optimizer, DP accountant and ledger, participation), written atomically
    participation.json phone ids and how many accepted updates each sent (for the histogram)
    final.json         full held-out evaluation of the final model, rounds run, why the run stopped,
                       and where the phone hosts ran (``phone_hosts``: Flower nodes that answered,
                       machine names, Ray node ids; :class:`HostPlaces`)
    bundle/            on-device artifact bundle of the final model (models.bundle)
    report.html        self-contained report with plots (fedkey.report), written last
    .lock              held while a run writes the folder: a second run into it is refused (fedkey.run_lock)

``resume`` continues after the checkpoint's round with the same results as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedkey.config import to_toml
from fedkey.models.checkpoint_file import CheckpointFile
from fedkey.models.manifest import flatten_params, param_layout, unflatten_weights
from fedkey.run_lock import run_folder_lock
from fedkey.server.stopping import STOP, RunInterrupted, exchange, replies_as_they_come
from fedkey.server.strategy import FleetStrategy, RoundRecord, query_initial_weights
from fedkey.simulate import RunSettings, SimulationSetup, build_setup, config_from_run_config

# under the "flwr" logger: its handlers and level apply (per-round lines under `flwr run`, quiet under
# `fedkey simulate`, which shows a progress bar instead)
log = logging.getLogger(f"flwr.{__name__}")

METRIC_KEYS = (
    "round",
    "sim_time_s",
    "wall_time_s",
    "selected",
    "reported",
    "dropped",
    "stragglers",
    "rejected",
    "bytes_up",
    "bytes_down",
    "loss",
    "recall@1",
    "recall@3",
    "epsilon",
    "delta",
)
CHECKPOINT = "checkpoint.pt"
NODE_WAIT_S = 600.0
#: the reply record in which a phone host says where it ran (``device_sim.phone_host.host_identity``)
HOST_KEY = "host"


class ServerRunError(RuntimeError):
    """The run cannot go on (no phone host connected, a checkpoint from another configuration...)."""


@dataclass
class HostPlaces:
    """Where the phone hosts that answered ran: Flower node ids, machine names and Ray node ids.

    Shows that a Ray cluster or a deployment really spread the work (final.json ``phone_hosts``);
    after a resume it covers the resumed part only.
    """

    flower_nodes: set[int] = field(default_factory=set)
    hostnames: set[str] = field(default_factory=set)
    ray_nodes: set[str] = field(default_factory=set)

    def observing(self, replies: Iterable[Message]) -> Iterator[Message]:
        """The replies, passed on one by one, recording the place of every reply that carries one."""
        for msg in replies:
            if not msg.has_error() and HOST_KEY in msg.content.config_records:
                host = msg.content.config_records[HOST_KEY]
                self.flower_nodes.add(msg.metadata.src_node_id)
                self.hostnames.add(str(host.get("hostname", "")))
                if host.get("ray-node-id"):
                    self.ray_nodes.add(str(host["ray-node-id"]))
            yield msg

    def summary(self) -> dict[str, Any]:
        """The final.json entry: how many Flower nodes answered, on which machines and Ray nodes."""
        return {
            "flower_nodes": len(self.flower_nodes),
            "hostnames": sorted(self.hostnames),
            "ray_nodes": sorted(self.ray_nodes),
        }


class SimulationRun:
    """One run's loop and outputs; :func:`serve` drives it with a Flower Grid."""

    def __init__(self, settings: RunSettings, setup: SimulationSetup) -> None:
        self.settings = settings
        self.setup = setup
        self.config = setup.config
        self.out = settings.out
        self.task_config = setup.task.to_config()
        self.strategy: FleetStrategy | None = None  # built from the checkpoint, or on the grid by run()
        self.next_round = 1
        self.checkpointed = 0  # the round the run folder's checkpoint holds (0: none yet)
        self.wall_offset_s = 0.0
        self.stopped = "rounds"
        self.hosts = HostPlaces()

    def prepare_outputs(self) -> None:
        """Write config.toml; on resume restore the checkpoint and drop metric lines after it (the
        strategy is restored before anything is written: a checkpoint that does not fit changes nothing)."""
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = self.out / "metrics.jsonl"
        ckpt_path = self.out / CHECKPOINT
        if not (self.settings.resume and ckpt_path.is_file()):
            (self.out / "config.toml").write_text(to_toml(self.config))
            metrics.unlink(missing_ok=True)
            return
        ckpt = CheckpointFile.load(ckpt_path)
        meta = ckpt.meta
        if meta.get("kind") != "simulate":
            raise ServerRunError(f"{ckpt_path} is not a `fedkey simulate` checkpoint")
        if ckpt.model_config != self.setup.model_config:
            raise ServerRunError(
                f"{ckpt_path} holds a model of shape {ckpt.model_config.param_shapes()}, this run's model is "
                f"{self.setup.model_config.param_shapes()}"
            )
        weights = flatten_params(ckpt.params, param_layout(ckpt.model_config))
        self.strategy = self.new_strategy(weights)
        self.strategy.load_state_dict(weights, meta["strategy"])
        done = int(meta["round"])
        self.next_round = done + 1
        self.checkpointed = done
        self.wall_offset_s = float(meta["wall_time_s"])
        (self.out / "config.toml").write_text(to_toml(self.config))
        if metrics.is_file():
            kept = [line for line in metrics.read_text().splitlines() if line and json.loads(line)["round"] <= done]
            metrics.write_text("".join(line + "\n" for line in kept))
        log.info("resuming after round %d", done)

    def new_strategy(self, weights: np.ndarray) -> FleetStrategy:
        return FleetStrategy(self.setup.strategy_settings, self.setup.fleet, weights, self.task_config)

    def evaluate(self, grid: Grid, rnd: int, eval_config: Mapping[str, ConfigRecordValues]) -> dict[str, float]:
        """The global model's held-out metrics, computed by a phone host."""
        assert self.strategy is not None
        messages = self.strategy.configure_evaluate(rnd, self.strategy.arrays(), ConfigRecord(dict(eval_config)), grid)
        replies = exchange(grid, messages, self.config.simulate.host_timeout_s, self.checkpointed)
        metrics = self.strategy.aggregate_evaluate(rnd, replies)
        assert metrics is not None
        return {k: float(v) for k, v in metrics.items()}  # type: ignore[arg-type]

    def metrics_line(self, record: RoundRecord, wall_s: float, recall: dict[str, float] | None) -> dict[str, Any]:
        line = {
            "round": record.round,
            "sim_time_s": record.sim_time_s,
            "wall_time_s": wall_s,
            "selected": record.selected,
            "reported": record.reported,
            "dropped": record.dropped,
            "stragglers": record.stragglers,
            "rejected": record.rejected,
            "bytes_up": record.bytes_up,
            "bytes_down": record.bytes_down,
            "loss": record.loss,
            "recall@1": recall["recall@1"] if recall else None,
            "recall@3": recall["recall@3"] if recall else None,
            "epsilon": record.epsilon,
            "delta": record.delta,
        }
        assert tuple(line) == METRIC_KEYS
        return line

    def checkpoint(self, done: int, wall_s: float) -> None:
        assert self.strategy is not None
        model = self.setup.model_config
        CheckpointFile(
            model_config=model,
            params=unflatten_weights(self.strategy.weights, param_layout(model)),
            tokenizer=self.setup.data.tokenizer.serialized(),
            seq_len=self.config.simulate.seq_len,
            model_version=self.strategy.model_version,
            meta={"kind": "simulate", "round": done, "wall_time_s": wall_s, "strategy": self.strategy.state_dict()},
        ).save(self.out / CHECKPOINT)
        self.checkpointed = done
        self.write_participation()

    def write_participation(self) -> None:
        assert self.strategy is not None
        ids = sorted(self.strategy.participation)
        payload = {
            "phones": self.setup.fleet.size,
            "phone_ids": ids,
            "counts": [self.strategy.participation[i] for i in ids],
        }
        tmp = self.out / "participation.json.tmp"
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.out / "participation.json")

    def run(self, grid: Grid) -> None:
        """All remaining rounds, then the final evaluation, checkpoint and bundle. A stop request
        (``server.stopping.STOP``) ends the run after a checkpoint with :class:`RunInterrupted`, before
        the final outputs."""
        sim = self.config.simulate
        if self.strategy is None:
            self.strategy = self.new_strategy(query_initial_weights(grid, self.task_config, sim.host_timeout_s))
        started = time.perf_counter()
        done = self.next_round - 1
        wall_s = self.wall_offset_s
        self.strategy.summary()
        progress = _progress(self.settings.progress)
        with progress:
            task = progress.add_task("rounds", total=sim.rounds, completed=done)
            for rnd in range(self.next_round, sim.rounds + 1):
                if STOP.requested:
                    self.stopped = "request"
                    break
                if self.strategy.budget_exhausted():
                    self.stopped = "privacy budget"
                    log.warning("stopping before round %d: the central DP budget would be exceeded", rnd)
                    break
                messages = list(self.strategy.configure_train(rnd, self.strategy.arrays(), ConfigRecord(), grid))
                replies = replies_as_they_come(grid, messages, sim.host_timeout_s, self.checkpointed)
                record = self.strategy.aggregate_round(rnd, self.hosts.observing(replies))
                recall = None
                if rnd == sim.rounds or (sim.eval_every and rnd % sim.eval_every == 0):
                    recall = self.evaluate(grid, rnd, self.setup.periodic_eval)
                wall_s = self.wall_offset_s + time.perf_counter() - started
                line = self.metrics_line(record, wall_s, recall)
                with (self.out / "metrics.jsonl").open("a") as handle:
                    handle.write(json.dumps(line) + "\n")
                done = rnd
                if rnd % sim.checkpoint_every == 0:
                    self.checkpoint(done, wall_s)
                summary = _summary(line)
                progress.update(task, advance=1, description=summary)
                if not self.settings.progress:
                    log.info("round %d/%d: %s", rnd, sim.rounds, summary)
        self.checkpoint(done, wall_s)
        if self.stopped == "request":
            raise RunInterrupted(done)
        self.finish(grid, done)

    def finish(self, grid: Grid, done: int) -> None:
        """Full held-out evaluation, final.json, the artifact bundle of the final model and the report."""
        assert self.strategy is not None
        final = {
            "rounds": done,
            "stopped_by": self.stopped,
            "model_version": self.strategy.model_version,
            "sim_time_s": self.strategy.elapsed_s,
            "held_out_users": self.evaluate(grid, done, self.setup.final_eval),
            "parameters": self.setup.model_config.num_parameters(),
            "phone_hosts": self.hosts.summary(),
        }
        epsilon, delta = self.strategy.privacy_spent()
        final |= {"epsilon": epsilon, "delta": delta}
        (self.out / "final.json").write_text(json.dumps(final, indent=2))
        if self.config.simulate.export_bundle:
            self.export_bundle()
        from fedkey.report import write_report  # matplotlib: loaded only once the run is over

        write_report(self.out)

    def export_bundle(self) -> None:
        """``fedkey export`` of the final checkpoint in a child process (ONNX export needs torch), with the
        data's lexicon: the words the recall metrics count, as on the phone."""
        command = [
            *(sys.executable, "-m", "fedkey", "export", "--force"),
            *("--checkpoint", str(self.out / CHECKPOINT), "--out", str(self.out / "bundle")),
            *("--lexicon", str(self.setup.data.root / "lexicon.txt"), "--threads", str(self.config.simulate.threads)),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ServerRunError(f"exporting the bundle failed: {done.stderr.strip()[-2000:]}")


def _summary(line: Mapping[str, Any]) -> str:
    parts = []
    if line["loss"] is not None:
        parts.append(f"loss {line['loss']:.3f}")
    if line["recall@1"] is not None:
        parts.append(f"r@1 {line['recall@1']:.3f}")
    if line["epsilon"] is not None:
        parts.append(f"ε {line['epsilon']:.2f}")
    parts.append(f"{line['reported']}/{line['selected']} reported")
    parts.append(f"↑{line['bytes_up'] / 1e6:.2f} MB")
    return "  ".join(parts)


def _progress(visible: bool) -> Progress:
    columns = (
        TextColumn("[bold]simulate[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    return Progress(*columns, console=Console(stderr=True), disable=not visible)


def wait_for_nodes(grid: Grid, wanted: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    """Node ids once ``wanted`` phone hosts are connected (or at least one after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= wanted or (nodes and time.monotonic() > deadline):
            return nodes
        if time.monotonic() > deadline:
            raise ServerRunError(f"no phone host connected within {timeout_s:.0f} s")
        time.sleep(0.2)


def serve(grid: Grid, run_config: Mapping[str, Any]) -> None:
    """Build the run from run_config and run it on ``grid``."""
    settings = config_from_run_config(run_config)
    setup = build_setup(settings.config, settings.data_dir)
    run = SimulationRun(settings, setup)
    with run_folder_lock(settings.out):
        run.prepare_outputs()
        nodes = wait_for_nodes(grid, settings.config.simulate.phone_hosts)
        log.info("%d phone host(s) connected", len(nodes))
        run.run(grid)


def make_server_app(run_config: Mapping[str, Any]) -> ServerApp:
    """A ServerApp whose run_config entries are fixed in advance.

    Flower's in-process ``run_simulation`` hands the ServerApp an empty run_config; `fedkey simulate`
    uses this to pass its own. Entries Flower provides (``flwr run``) are overridden by these.
    """
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        serve(grid, {**context.run_config, **run_config})

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run` / deployment entry point: everything comes from ``context.run_config``."""
    serve(grid, context.run_config)
