"""The phone host: a Flower ``ClientApp`` that runs many simulated phones per message.

Flower's simulation engine costs ~5-7 ms per message plus ~5-7 ms per MB of model and grows with the
number of registered nodes (ARCHITECTURE.md field notes), so a virtual SuperNode does not stand for
one phone: it hosts every phone the server lists in its message. Loadable as
``fedkey.device_sim.phone_host:app``.

Message in (from ``fedkey.server.strategy.FleetStrategy``): ``ArrayRecord`` "arrays" with the flat
float32 global weights "weights", and ``ConfigRecord`` "config" holding the round's ``phone-ids``,
``phone-seeds``, ``round`` and ``model-version`` plus the run's task settings written by
:meth:`HostTask.to_config` (data folder, model shape, population, update pipeline, local training).

For each listed phone: the text of its real user (``Population.user_of``; phones beyond the real
users reuse a real user's text), at most ``max-messages`` of its messages (``message-selection``
"sample": a fresh sample drawn with the phone's round seed, as a phone's training cache holds new text
each day; "first": always the same first ones) cut into ``seq-len`` windows, shuffled by the phone's
seed, grouped into batches; ``local-steps`` SGD steps (or ``local-epochs`` passes). The ``torch``
engine runs :mod:`batched_training` (``phone-group`` phones stacked together); the ``onnx`` engine
runs ``local_update.onnx`` phone by phone, as the phone runs it (graphs exported once per process
into a cache folder). Then the update pipeline encodes all deltas at once.

Message out: ``ConfigRecord`` "updates" (``phone-ids``, ``payloads``: one wire-format v1 message per
phone), ``MetricRecord`` "metrics" (per-phone ``examples`` = training sequences, ``tokens``,
``loss`` = mean step loss; host ``train-s``, ``encode-s``) and ``ConfigRecord`` "host" (where the host
ran: ``hostname``, ``pid`` and ``ray-node-id``, the Ray node's id or "" outside Ray; see
:func:`host_identity`).

Two more messages, so that the server never needs the model's code (nor torch): ``evaluate`` (the
same "arrays" and task "config", plus :class:`EvalTask`'s keys) evaluates the weights on held-out
users and replies with ``MetricRecord`` "metrics" (``recall@1``, ``recall@3``, ``perplexity``...);
``query.initial_weights`` (task "config" only) replies with "arrays" holding the run's initial
weights, the model's seeded initialisation (``run-seed``).

The torch side (training, evaluation, initialisation) lives in :mod:`host_runtime`, imported by the
handlers on the first message: the driver process of Flower's simulation loads this ClientApp object
next to the ServerApp and stays torch-free.

Node config (``flower-supernode --node-config``; see ``fedkey.deploy``), all optional:
``data-dir`` (this node's copy of the prepared data; default: the server's path from the task),
``threads`` (torch / ONNX Runtime threads; default: the task's), ``cache-dir`` (ONNX graphs; default:
the system temp folder). Data, tokenised per-user sequences and the population are cached in the
process across rounds.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fedkey.device_sim.config import PopulationConfig
from fedkey.models.model_config import ModelConfig
from fedkey.protocol.pipeline_config import PipelineConfig

if TYPE_CHECKING:
    from fedkey.device_sim.host_runtime import PhoneHost

#: Record names of the messages (the server's ``fedkey.server.strategy`` uses the same names).
ARRAYS_KEY, WEIGHTS_KEY, CONFIG_KEY, METRICS_KEY, UPDATES_KEY = "arrays", "weights", "config", "metrics", "updates"
#: The ``query`` action that returns the run's initial weights.
INITIAL_WEIGHTS = "initial_weights"

Engine = Literal["torch", "onnx"]
MessageSelection = Literal["sample", "first"]
UpdateWeight = Literal["trained", "cached"]


class PhoneHostError(ValueError):
    """A host task is malformed or cannot run on this node (the message says which key)."""


@dataclass(frozen=True)
class HostTask:
    """The run-wide part of a phone host's task (the same every round)."""

    data_dir: str
    model: ModelConfig
    population: PopulationConfig
    pipeline: PipelineConfig
    run_seed: int
    engine: Engine = "torch"
    seq_len: int = 20
    batch_size: int = 16
    local_epochs: float = 1.0
    local_steps: int = 0
    max_messages: int = 64
    message_selection: MessageSelection = "sample"
    update_weight: UpdateWeight = "trained"
    lr: float = 0.5
    grad_clip: float = 1.0
    delta_clip: float = 0.0
    dropout: float = 0.0
    threads: int = 1
    phone_group: int = 1

    def to_config(self) -> dict[str, ConfigRecordValues]:
        """The ConfigRecord entries the server sends every round (plain scalars and JSON strings)."""
        return {
            "data-dir": self.data_dir,
            "model": self.model.model_dump_json(),
            "population": self.population.model_dump_json(),
            "pipeline": self.pipeline.model_dump_json(),
            "run-seed": self.run_seed,
            "engine": self.engine,
            "seq-len": self.seq_len,
            "batch-size": self.batch_size,
            "local-epochs": float(self.local_epochs),
            "local-steps": self.local_steps,
            "max-messages": self.max_messages,
            "message-selection": self.message_selection,
            "update-weight": self.update_weight,
            "lr": float(self.lr),
            "grad-clip": float(self.grad_clip),
            "delta-clip": float(self.delta_clip),
            "dropout": float(self.dropout),
            "threads": self.threads,
            "phone-group": self.phone_group,
        }

    @classmethod
    def from_config(
        cls, record: Mapping[str, ConfigRecordValues], node_config: Mapping[str, object] | None = None
    ) -> HostTask:
        """Parse a task; node config ``data-dir`` / ``threads`` override the server's values."""
        node = node_config or {}
        try:
            engine = str(record["engine"])
            if engine not in ("torch", "onnx"):
                raise PhoneHostError(f"engine must be 'torch' or 'onnx', got {engine!r}")
            dropout = float(record["dropout"])  # type: ignore[arg-type]
            if not 0.0 <= dropout < 1.0 or (dropout > 0 and engine != "torch"):
                raise PhoneHostError(f"dropout must be in [0, 1) and needs the torch engine, got {dropout} ({engine})")
            selection = str(record["message-selection"])
            if selection not in ("sample", "first"):
                raise PhoneHostError(f"message-selection must be 'sample' or 'first', got {selection!r}")
            weight = str(record["update-weight"])
            if weight not in ("trained", "cached"):
                raise PhoneHostError(f"update-weight must be 'trained' or 'cached', got {weight!r}")
            return cls(
                data_dir=str(node.get("data-dir") or record["data-dir"]),
                model=ModelConfig.model_validate_json(str(record["model"])),
                population=PopulationConfig.model_validate_json(str(record["population"])),
                pipeline=PipelineConfig.model_validate_json(str(record["pipeline"])),
                run_seed=int(record["run-seed"]),  # type: ignore[arg-type]
                engine=engine,  # type: ignore[arg-type]
                seq_len=int(record["seq-len"]),  # type: ignore[arg-type]
                batch_size=int(record["batch-size"]),  # type: ignore[arg-type]
                local_epochs=float(record["local-epochs"]),  # type: ignore[arg-type]
                local_steps=int(record["local-steps"]),  # type: ignore[arg-type]
                max_messages=int(record["max-messages"]),  # type: ignore[arg-type]
                message_selection=selection,  # type: ignore[arg-type]
                update_weight=weight,  # type: ignore[arg-type]
                lr=float(record["lr"]),  # type: ignore[arg-type]
                grad_clip=float(record["grad-clip"]),  # type: ignore[arg-type]
                delta_clip=float(record["delta-clip"]),  # type: ignore[arg-type]
                dropout=dropout,
                threads=int(node.get("threads") or record["threads"]),  # type: ignore[call-overload]
                phone_group=int(record["phone-group"]),  # type: ignore[arg-type]
            )
        except KeyError as err:
            raise PhoneHostError(f"host task lacks the key {err.args[0]!r}") from None

    def host_key(self) -> tuple[str, ...]:
        """What the cached per-process host state depends on."""
        return (
            self.data_dir,
            self.model.model_dump_json(),
            self.population.model_dump_json(),
            self.pipeline.model_dump_json(),
            str(self.run_seed),
            str(self.seq_len),
        )


@dataclass(frozen=True)
class EvalTask:
    """An ``evaluate`` message's settings: which held-out text and how (``models.evaluate.evaluate_model``).

    ``users`` > 0 evaluates all messages of that many held-out users drawn with the run seed (the
    periodic sample); 0 evaluates every held-out user's messages (the final evaluation).
    """

    users: int
    max_positions: int
    beam: int
    max_word_pieces: int

    def to_config(self) -> dict[str, ConfigRecordValues]:
        return {
            "eval-users": self.users,
            "eval-max-positions": self.max_positions,
            "eval-beam": self.beam,
            "eval-max-word-pieces": self.max_word_pieces,
        }

    @classmethod
    def from_config(cls, record: Mapping[str, ConfigRecordValues]) -> EvalTask:
        try:
            return cls(
                users=int(record["eval-users"]),  # type: ignore[arg-type]
                max_positions=int(record["eval-max-positions"]),  # type: ignore[arg-type]
                beam=int(record["eval-beam"]),  # type: ignore[arg-type]
                max_word_pieces=int(record["eval-max-word-pieces"]),  # type: ignore[arg-type]
            )
        except KeyError as err:
            raise PhoneHostError(f"evaluate message lacks the key {err.args[0]!r}") from None


#: Key of the reply's record that says where the host ran.
HOST_KEY = "host"


def host_identity() -> dict[str, ConfigRecordValues]:
    """Where this phone host runs: machine name, process id and Ray node id ("" outside a Ray worker).

    The server collects these (final.json ``phone_hosts``) to show which machines did the work.
    """
    ray = sys.modules.get("ray")  # only inside Flower's Ray backend, never imported here
    node_id = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    return {"hostname": socket.gethostname(), "pid": os.getpid(), "ray-node-id": node_id}


@dataclass
class HostResult:
    """Each phone's encoded update and metrics, in the order of ``phone_ids``."""

    phone_ids: list[int]
    payloads: list[bytes]
    examples: list[int]
    tokens: list[int]
    losses: list[float]
    train_s: float
    encode_s: float

    def to_content(self) -> RecordDict:
        """The reply's records."""
        return RecordDict(
            {
                UPDATES_KEY: ConfigRecord({"phone-ids": self.phone_ids, "payloads": self.payloads}),
                METRICS_KEY: MetricRecord(
                    {
                        "examples": self.examples,
                        "tokens": self.tokens,
                        "loss": self.losses,
                        "train-s": self.train_s,
                        "encode-s": self.encode_s,
                    }
                ),
                HOST_KEY: ConfigRecord(host_identity()),
            }
        )


def _weights(msg: Message) -> np.ndarray:
    return msg.content.array_records[ARRAYS_KEY][WEIGHTS_KEY].numpy().astype(np.float32, copy=False)


def _host(msg: Message, context: Context) -> PhoneHost:
    from fedkey.device_sim.host_runtime import host_for

    task = HostTask.from_config(msg.content.config_records[CONFIG_KEY], context.node_config)
    cache_dir = context.node_config.get("cache-dir")
    return host_for(task, str(cache_dir) if cache_dir else None)


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run every phone listed in the message and return each phone's encoded update."""
    config = msg.content.config_records[CONFIG_KEY]
    host = _host(msg, context)
    result = host.run(
        _weights(msg),
        [int(i) for i in config["phone-ids"]],  # type: ignore[union-attr]
        [int(s) for s in config["phone-seeds"]],  # type: ignore[union-attr]
        int(config["round"]),  # type: ignore[arg-type]
        int(config["model-version"]),  # type: ignore[arg-type]
        host.task.threads,
    )
    return Message(content=result.to_content(), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the message's weights on held-out users (:class:`EvalTask`); reply with the metrics."""
    spec = EvalTask.from_config(msg.content.config_records[CONFIG_KEY])
    metrics = _host(msg, context).evaluate(_weights(msg), spec)
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


@app.query(INITIAL_WEIGHTS)
def send_initial_weights(msg: Message, context: Context) -> Message:
    """The run's initial global weights: the model's seeded initialisation (``run-seed``), flattened."""
    from fedkey.models.cifg_lstm import initial_weights

    task = HostTask.from_config(msg.content.config_records[CONFIG_KEY], context.node_config)
    weights = initial_weights(task.model, task.run_seed)
    return Message(content=RecordDict({ARRAYS_KEY: ArrayRecord({WEIGHTS_KEY: Array(weights)})}), reply_to=msg)
