"""Glue of `fedkey simulate`: builds what the ServerApp needs from the config and the prepared data.

``server`` and ``device_sim`` never import each other; this module (``fedkey`` may import everything)
joins them:

- :class:`PopulationFleet` satisfies ``server.fleet.Fleet`` with a ``device_sim`` ``Population``; it
  turns each phone's local work (its real user's data, the local-training settings and the model
  size) into FLOPs for the round-time model.
- :func:`build_setup` loads the data, builds population, model, pipeline, the phone hosts' task and
  the strategy's settings, and refuses a configuration that cannot work before anything runs
  (:class:`SimulationConfigError`).
- :func:`config_from_run_config` reads Flower's ``run_config`` (``flwr run`` / ``fedkey simulate``).
- :func:`run_local` runs the whole simulation in-process on Flower's simulation engine (Ray backend,
  ``simulate.phone_hosts`` virtual SuperNodes).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecordValues

from fedkey.config import ConfigError, FedkeyConfig, load_run_config
from fedkey.data import prepare_from_config
from fedkey.device_sim.federated_data import FederatedData
from fedkey.device_sim.phone_host import EvalTask, HostTask
from fedkey.device_sim.population import Population
from fedkey.device_sim.round_time import RoundOutcome
from fedkey.models.model_config import ModelConfig
from fedkey.models.sequences import message_sequences
from fedkey.privacy.config import LocalAccountingConfig
from fedkey.privacy.errors import PrivacyConfigError
from fedkey.protocol.errors import PipelineInputError
from fedkey.protocol.pipeline import UpdatePipeline
from fedkey.server.fleet import IdArray
from fedkey.server.optimizers import ServerOptimizerSettings
from fedkey.server.sampling import over_selected
from fedkey.server.strategy import FleetStrategySettings

#: run_config keys besides dotted config overrides (``simulate.rounds = 5``).
RUN_CONFIG_KEYS = ("config-file", "data-dir", "out", "resume", "progress")
DEFAULT_DATA_CACHE = Path("data/chitchat")


class SimulationConfigError(ValueError):
    """A simulation configuration that cannot work (the message says why and what to change)."""


def train_flops_per_position(model: ModelConfig) -> float:
    """FLOPs of one training position (forward + backward ~ 3x forward's 2 FLOPs per weight used)."""
    c = model.resolved()
    e, h, v = c.embed_dim, c.hidden_dim, c.vocab_size
    assert e is not None and h is not None
    return 3 * 2 * (2 * e * 3 * h + h * e + e * v)


class PopulationFleet:
    """``server.fleet.Fleet`` over a ``Population``; phone i's compute comes from its real user's data."""

    def __init__(self, population: Population, flops_per_user: np.ndarray) -> None:
        if flops_per_user.shape != (population.n_real_users,):
            raise ValueError("need one FLOP count per real user")
        self.population = population
        self.flops_per_user = flops_per_user

    @property
    def size(self) -> int:
        return self.population.size

    def eligible_ids(self, t_utc_s: float) -> IdArray:
        return self.population.eligible_ids(t_utc_s)

    def phone_seeds(self, ids: IdArray, round_idx: int) -> IdArray:
        return self.population.phone_seeds(ids, round_idx)

    def simulate_round(
        self,
        ids: IdArray,
        *,
        round_idx: int,
        deadline_s: float,
        download_bytes: float,
        upload_bytes: float,
        target_reports: int | None,
    ) -> RoundOutcome:
        flops = self.flops_per_user[self.population.user_of(ids)] if len(ids) else 0.0
        return self.population.simulate_round(
            ids,
            round_idx=round_idx,
            deadline_s=deadline_s,
            download_bytes=download_bytes,
            upload_bytes=upload_bytes,
            flops=flops,
            target_reports=target_reports,
        )

    def fastest_round_s(self, download_bytes: float, upload_bytes: float) -> float:
        return self.population.fastest_round_time(download_bytes, upload_bytes, flops=float(self.flops_per_user.min()))


@dataclass
class SimulationSetup:
    """Everything the ServerApp needs for a run, built and checked by :func:`build_setup`."""

    config: FedkeyConfig
    data: FederatedData
    model_config: ModelConfig
    fleet: PopulationFleet
    task: HostTask
    strategy_settings: FleetStrategySettings
    periodic_eval: dict[str, ConfigRecordValues]  # EvalTask of the evaluation every eval_every rounds
    final_eval: dict[str, ConfigRecordValues]  # EvalTask of the final evaluation (all held-out users)


def local_steps(data: FederatedData, config: FedkeyConfig) -> np.ndarray:
    """Expected local SGD steps of each real training user's phone in one round (float64)."""
    sim = config.simulate
    out = np.empty(len(data.train_users), np.float64)
    for i, user in enumerate(data.train_users):
        limit = sim.max_messages_per_phone or len(user.messages)
        if sim.message_selection == "first":
            rows = len(message_sequences(data.tokenizer, user.messages[:limit], sim.seq_len))
        else:  # the expected rows of a sample of `limit` messages
            rows = len(message_sequences(data.tokenizer, user.messages, sim.seq_len))
            rows = round(rows * min(1.0, limit / len(user.messages)))
        batches = max(1, math.ceil(rows / sim.local_batch_size))
        out[i] = sim.local_steps or max(1, math.ceil(sim.local_epochs * batches))
    return out


def user_flops(data: FederatedData, model: ModelConfig, config: FedkeyConfig) -> np.ndarray:
    """Local-training FLOPs of each real training user's phone in one round (padded positions count)."""
    sim = config.simulate
    return local_steps(data, config) * sim.local_batch_size * sim.seq_len * train_flops_per_position(model)


def upload_estimate(pipeline: UpdatePipeline, seed: int) -> int:
    """Bytes of one phone's encoded update, measured on a seeded random delta (for the round-time model)."""
    delta = np.random.default_rng(seed).standard_normal(pipeline.dim).astype(np.float32) * 1e-3
    return len(pipeline.encode(delta, [0], 0, 0, seed=seed).messages[0])


def _check_pipeline(config: FedkeyConfig, dim: int) -> UpdatePipeline:
    kinds = config.pipeline.kinds()
    if "error_feedback" in kinds:
        raise SimulationConfigError(
            "pipeline: error_feedback keeps per-phone residuals across rounds, which the phone hosts do not "
            "store (a phone may run on another host each round); remove the error_feedback stage"
        )
    clip = config.pipeline.clip()
    if clip is not None and clip.adaptive is not None:
        raise SimulationConfigError(
            "pipeline: adaptive clipping is not supported by `fedkey simulate`; use a fixed clip norm"
        )
    try:
        return UpdatePipeline(config.pipeline, dim)
    except PipelineInputError as err:
        raise SimulationConfigError(f"pipeline: {err}") from None


_SETUPS: dict[tuple[str, str], SimulationSetup] = {}


def build_setup(config: FedkeyConfig, data_dir: str | Path) -> SimulationSetup:
    """Load data, build the run's pieces, and refuse a configuration that cannot work.

    The last setup is cached per (config, data folder): `fedkey simulate` checks the configuration
    before Flower starts and its in-process ServerApp then reuses the result.
    """
    key = (config.model_dump_json(), str(Path(data_dir).resolve()))
    if key not in _SETUPS:
        _SETUPS.clear()
        _SETUPS[key] = _build_setup(config, data_dir)
    return _SETUPS[key]


def _build_setup(config: FedkeyConfig, data_dir: str | Path) -> SimulationSetup:
    sim = config.simulate
    if sim.local_dropout > 0 and sim.local_engine != "torch":
        raise SimulationConfigError(
            f"simulate.local_dropout = {sim.local_dropout:g} needs local_engine = 'torch': the exported phone "
            "graphs (local_update.onnx) train without dropout"
        )
    data = FederatedData.load(data_dir)
    model_config = config.model.model_copy(update={"vocab_size": data.tokenizer.vocab_size}).resolved()
    dim = model_config.num_parameters()
    population = Population.from_config(config.population, len(data.train_users), sim.seed)
    fleet = PopulationFleet(population, user_flops(data, model_config, config))
    pipeline = _check_pipeline(config, dim)
    upload = upload_estimate(pipeline, sim.seed)
    selected = over_selected(sim.cohort_size, sim.over_selection)
    if sim.sampling == "uniform" and selected > population.size:
        raise SimulationConfigError(
            f"simulate.cohort_size = {sim.cohort_size} with over_selection {sim.over_selection} selects "
            f"{selected} phones but the population has {population.size}; lower the cohort or set "
            "population.size"
        )
    if sim.sampling == "poisson":
        assert sim.poisson_rate is not None
        if sim.poisson_rate * population.size < 1:
            raise SimulationConfigError(
                f"simulate.poisson_rate = {sim.poisson_rate} selects {sim.poisson_rate * population.size:.2g} "
                f"of {population.size} phones per round on average; raise the rate"
            )
    fastest = fleet.fastest_round_s(4 * dim, upload)
    if sim.deadline_s < fastest:
        raise SimulationConfigError(
            f"simulate.deadline_s = {sim.deadline_s:g} s is shorter than the fastest phone's round "
            f"({fastest:.1f} s for a {4 * dim / 1e6:.1f} MB model and {upload / 1e3:.1f} kB update): no phone "
            "could ever report; raise the deadline or shrink the model / local work"
        )
    dp = config.central_dp
    if dp is not None:
        if dp.sampling == "fixed" and dp.population != population.size:
            raise SimulationConfigError(
                f"central_dp.population = {dp.population} but the population has {population.size} phones"
            )
        try:
            from fedkey.privacy.accountant import CentralDpAccountant

            accountant = CentralDpAccountant(dp.delta, dp.accountant, dp.target_epsilon)
            if accountant.budget_exhausted(dp.round_spec()):
                raise SimulationConfigError(
                    f"central DP budget already spent at round 0: one round gives ε = "
                    f"{accountant.epsilon_after(dp.round_spec()):.3g} > target_epsilon = {dp.target_epsilon:g} "
                    f"at δ = {dp.delta:g}; raise the noise multiplier or the budget, or sample fewer phones"
                )
        except PrivacyConfigError as err:
            raise SimulationConfigError(f"central_dp: {err}") from None
    settings = FleetStrategySettings(
        cohort_size=sim.cohort_size,
        over_selection=sim.over_selection,
        sampling=sim.sampling,
        poisson_rate=sim.poisson_rate,
        deadline_s=sim.deadline_s,
        min_reports=sim.min_reports,
        seed=sim.seed,
        start_time_utc_s=sim.start_time_utc_s,
        round_interval_s=sim.round_interval_s,
        upload_estimate_bytes=float(upload),
        optimizer=ServerOptimizerSettings(**config.simulate.optimizer.model_dump()),
        central_dp=dp,
        # per-phone ε of local DP is reported at the privacy package's default δ for a phone's reports
        local_dp_delta=LocalAccountingConfig().delta if pipeline.local_mechanism() is not None else None,
        local_lr_schedule=sim.local_lr_schedule,
        rounds=sim.rounds,
        phones_per_message=sim.phones_per_message,
    )
    task = HostTask(
        data_dir=str(Path(data_dir).resolve()),
        model=model_config,
        population=config.population,
        pipeline=config.pipeline,
        run_seed=sim.seed,
        engine=sim.local_engine,
        seq_len=sim.seq_len,
        batch_size=sim.local_batch_size,
        local_epochs=sim.local_epochs,
        local_steps=sim.local_steps,
        max_messages=sim.max_messages_per_phone,
        message_selection=sim.message_selection,
        update_weight=sim.update_weight,
        lr=sim.local_lr,
        grad_clip=sim.local_grad_clip,
        delta_clip=sim.local_delta_clip,
        dropout=sim.local_dropout,
        threads=sim.threads,
        phone_group=sim.phone_group,
    )
    ev = config.eval
    return SimulationSetup(
        config=config,
        data=data,
        model_config=model_config,
        fleet=fleet,
        task=task,
        strategy_settings=settings,
        periodic_eval=EvalTask(sim.eval_users, sim.eval_positions, ev.beam, ev.max_word_pieces).to_config(),
        final_eval=EvalTask(0, ev.max_positions, ev.beam, ev.max_word_pieces).to_config(),
    )


@dataclass(frozen=True)
class RunSettings:
    """What a ServerApp run reads from Flower's run_config."""

    config: FedkeyConfig
    data_dir: Path
    out: Path
    resume: bool
    progress: bool


def config_from_run_config(run_config: Mapping[str, Any]) -> RunSettings:
    """Parse run_config: ``config-file``, ``data-dir``, ``out``, ``resume``, ``progress`` and any dotted
    key as a config override (``simulate.rounds = 5``, as ``[tool.flwr.app.config.simulate]`` flattens).

    With ``resume`` and no ``config-file``, the run folder's ``config.toml`` is the base
    (:func:`fedkey.config.load_run_config`).
    """
    unknown = [k for k in run_config if k not in RUN_CONFIG_KEYS and "." not in k]
    if unknown:
        raise ConfigError(
            f"run_config: unknown key(s) {unknown}; expected {list(RUN_CONFIG_KEYS)} or "
            "dotted config keys such as simulate.rounds"
        )
    if "out" not in run_config or "data-dir" not in run_config:
        raise ConfigError("run_config needs 'out' (run folder) and 'data-dir' (prepared data folder)")
    out = Path(str(run_config["out"]))
    resume = bool(run_config.get("resume", False))
    config_file = run_config.get("config-file") or None
    overrides = [f"{k}={_toml_value(v)}" for k, v in run_config.items() if "." in k]
    return RunSettings(
        config=load_run_config(out, config_file, resume, overrides),
        data_dir=Path(str(run_config["data-dir"])),
        out=out,
        resume=resume,
        progress=bool(run_config.get("progress", False)),
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def ensure_data(data: Path | None, config: FedkeyConfig) -> Path:
    """The prepared data folder: ``data`` if given, else the chitchat cache (prepared on first use)."""
    if data is not None:
        if not (data / "prepare.json").is_file():
            raise SimulationConfigError(f"{data} is not a prepared data folder; run `fedkey data prepare`")
        return data
    if not (DEFAULT_DATA_CACHE / "prepare.json").is_file():
        prepare_from_config(config, DEFAULT_DATA_CACHE, corpus="chitchat")
    return DEFAULT_DATA_CACHE


class _DropDeprecation(logging.Filter):
    """Drops Flower's notice that ``run_simulation`` is deprecated (see :func:`run_local`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def backend_config(config: FedkeyConfig) -> dict[str, Any]:
    """Ray backend settings: each phone host gets ``simulate.threads`` CPUs."""
    sim = config.simulate
    init_args: dict[str, Any] = (
        {"address": sim.ray_address} if sim.ray_address else {"num_cpus": sim.phone_hosts * sim.threads}
    )
    init_args["logging_level"] = logging.ERROR
    init_args["log_to_driver"] = False
    return {"client_resources": {"num_cpus": sim.threads, "num_gpus": 0.0}, "init_args": init_args}


#: glibc malloc arenas per process. glibc's default, 8 per core, gives each of the many threads of Ray's
#: core worker, gRPC and Flower an arena of its own, and the server's and phone hosts' freed message and
#: delta buffers stay resident in them; 2 cut the simulation's footprint by about 35 MB
#: (bench/sim_throughput.py) at no measured cost in speed.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas() -> None:
    """Caps glibc's malloc arenas at :data:`MALLOC_ARENAS` (or the ``MALLOC_ARENA_MAX`` already set) in
    this process and, through the environment they inherit, in the Ray processes started from it."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to cap
        return
    libc.mallopt(_M_ARENA_MAX, int(os.environ["MALLOC_ARENA_MAX"]))


def start_local_ray(config: FedkeyConfig) -> None:
    """Start this machine's Ray as Flower's backend would (it then uses it as it is), with fewer malloc
    arenas (:func:`limit_malloc_arenas`) and less three helper processes a single-machine simulation has
    no use for, about 150 MB together: the autoscaler monitor (it scales clusters), the log monitor (it
    streams workers' logs to the driver; ``log_to_driver`` is off) and the dashboard's API server (jobs,
    state API; this install has no dashboard UI). The raylet, GCS and the per-node agents stay.
    ``Node._kill_process_type`` is what Ray's own ``kill_*`` helpers call, with ``wait`` (ray is pinned)."""
    import ray
    from ray._private import ray_constants, worker

    limit_malloc_arenas()
    ray.init(**backend_config(config)["init_args"], include_dashboard=False)
    node = worker._global_node
    assert node is not None
    helpers = (
        ray_constants.PROCESS_TYPE_MONITOR,
        ray_constants.PROCESS_TYPE_LOG_MONITOR,
        ray_constants.PROCESS_TYPE_DASHBOARD,
    )
    for kind in helpers:
        # SIGKILL: on SIGTERM the autoscaler monitor reports itself as failed on the driver's console;
        # wait: the process is reaped, no zombie is left
        node._kill_process_type(kind, allow_graceful=False, wait=True)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While running: the first Ctrl-C (SIGINT) asks the ServerApp to stop after the round in progress
    (it is checkpointed), a second one or SIGTERM to stop now (``server.stopping``); the run then ends
    with ``RunInterrupted`` carrying the last signal. Installed after Ray started, so SIGTERM reaches
    this handler rather than Ray's fatal-signal printer; the previous handlers come back afterwards."""
    from fedkey.server.stopping import STOP, RunInterrupted

    received: list[signal.Signals] = []

    def handle(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum))
        if signum == signal.SIGINT and not STOP.requested:
            STOP.after_round()
            print("\nstopping after the round in progress (Ctrl-C again to stop now)", file=sys.stderr)
        else:
            STOP.now()

    STOP.clear()
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except RunInterrupted as stop:
        if received:
            stop.signal = received[-1]
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        STOP.clear()


def run_local(run_config: Mapping[str, Any], verbose: bool = False) -> None:
    """Run the ServerApp and ``simulate.phone_hosts`` phone hosts in-process (Flower simulation engine).

    ``flwr.simulation.run_simulation`` is Flower 1.42's in-process engine; Flower marks it deprecated
    in favour of ``flwr run`` (which needs a SuperLink process and installs the app), so its one-line
    deprecation notice is filtered out here. ``flwr run .`` runs the same apps from pyproject.toml.
    Ctrl-C and SIGTERM stop the run (:func:`stop_on_signals`): it raises
    ``fedkey.server.stopping.RunInterrupted``.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # offline machines: no telemetry attempts
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning (no GPUs)
    from flwr.simulation import run_simulation

    from fedkey.device_sim.phone_host import app as client_app
    from fedkey.server.app import make_server_app

    settings = config_from_run_config(run_config)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    drop = _DropDeprecation()
    flwr_logger.addFilter(drop)
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    local_ray = not settings.config.simulate.ray_address
    if local_ray:
        start_local_ray(settings.config)
    try:
        with stop_on_signals():
            run_simulation(
                server_app=make_server_app(run_config),
                client_app=client_app,
                num_supernodes=settings.config.simulate.phone_hosts,
                backend_name="ray",
                backend_config=backend_config(settings.config),  # type: ignore[arg-type]
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.removeFilter(drop)
        flwr_logger.setLevel(level)
        if local_ray:  # Flower shuts Ray down after a run; not always when the run failed
            import ray

            ray.shutdown()
