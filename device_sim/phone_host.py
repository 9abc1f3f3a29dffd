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

Node config (``flower-supernode --node-config``; see ``fedkey.deploy``), all optional:
``data-dir`` (this node's copy of the prepared data; default: the server's path from the task),
``threads`` (torch / ONNX Runtime threads; default: the task's), ``cache-dir`` (ONNX graphs; default:
the system temp folder). Data, tokenised per-user sequences and the population are cached in the
process across rounds.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from flwr.app import ConfigRecord, ConfigRecordValues, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedkey.device_sim.batched_training import train_phones
from fedkey.device_sim.config import PopulationConfig
from fedkey.device_sim.federated_data import FederatedData
from fedkey.device_sim.population import Population
from fedkey.models.cifg_lstm import ModelConfig
from fedkey.models.onnx_local_update import Batches, OnnxLocalUpdate
from fedkey.models.onnx_train import export_train_graphs
from fedkey.models.sequences import SequenceBatch, encode_sequences
from fedkey.protocol.pipeline import UpdatePipeline
from fedkey.protocol.pipeline_config import PipelineConfig

Engine = Literal["torch", "onnx"]
MessageSelection = Literal["sample", "first"]


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


#: Key of the reply's record that says where the host ran.
HOST_KEY = "host"


def host_identity() -> dict[str, ConfigRecordValues]:
    """Where this phone host runs: machine name, process id and Ray node id ("" outside a Ray worker).

    The server collects these (final.json ``phone_hosts``) to show which machines did the work.
    """
    ray = sys.modules.get("ray")  # only inside Flower's Ray backend, never imported here
    node_id = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    return {"hostname": socket.gethostname(), "pid": os.getpid(), "ray-node-id": node_id}


#: Phones trained and encoded together in a host (bounds the deltas held at once: 16 x 6 MB for the
#: default model; the trainer gains nothing from more, it trains one phone at a time by default).
PHONES_PER_CHUNK = 16


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
                "updates": ConfigRecord({"phone-ids": self.phone_ids, "payloads": self.payloads}),
                "metrics": MetricRecord(
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


@functools.lru_cache(maxsize=4)
def _load_data(data_dir: str) -> FederatedData:
    return FederatedData.load(data_dir)


class PhoneHost:
    """The per-process state of a phone host: data, population, pipeline and per-user sequences."""

    def __init__(self, task: HostTask, cache_dir: str | None = None) -> None:
        self.task = task
        self.data = _load_data(task.data_dir)
        self.users = self.data.train_users
        self.population = Population.from_config(task.population, len(self.users), task.run_seed)
        self.model = task.model.resolved()
        if self.model.vocab_size != self.data.tokenizer.vocab_size:
            raise PhoneHostError(
                f"the model has {self.model.vocab_size} tokens, the data's tokenizer "
                f"{self.data.tokenizer.vocab_size}: data-dir {task.data_dir} is not the run's data"
            )
        self.pipeline = UpdatePipeline(task.pipeline, self.model.num_parameters())
        self.cache_dir = cache_dir
        self._encoded: dict[int, list[list[int]]] = {}
        self._onnx: OnnxLocalUpdate | None = None

    def encoded(self, user: int) -> list[list[int]]:
        """A real user's messages as piece ids, cached."""
        if user not in self._encoded:
            self._encoded[user] = self.data.tokenizer.encode_batch(list(self.users[user].messages))
        return self._encoded[user]

    def sequences(self, user: int, rng: np.random.Generator) -> SequenceBatch:
        """The training windows of a phone of ``user`` this round: all its messages when it has at most
        ``max_messages``, else that many, sampled with ``rng`` or the first ones (``message_selection``)."""
        encoded = self.encoded(user)
        limit = self.task.max_messages
        if limit and len(encoded) > limit:
            if self.task.message_selection == "first":
                encoded = encoded[:limit]
            else:
                encoded = [encoded[i] for i in np.sort(rng.choice(len(encoded), limit, replace=False))]
        return encode_sequences(encoded, self.task.seq_len)

    def phone_batches(self, user: int, seed: int) -> tuple[Batches, int, int, int]:
        """(batches, steps, examples, tokens) of one phone this round.

        The phone's seed picks its messages (:meth:`sequences`) and shuffles their rows; rows of
        similar length share a batch (ties in random order) and the batch order is shuffled, so the
        torch engine can cut padding off each step.
        """
        rng = np.random.default_rng(seed)
        seqs = self.sequences(user, rng)
        order = rng.permutation(len(seqs))
        order = order[np.argsort(seqs.lengths[order], kind="stable")]
        rows = seqs.take(order)
        b = Batches.from_rows(rows.inputs, rows.targets, rows.mask, self.task.batch_size)
        shuffle = rng.permutation(b.tokens.shape[0])
        batches = Batches(b.tokens[shuffle], b.targets[shuffle], b.mask[shuffle])
        n_batches = batches.tokens.shape[0]
        steps = self.task.local_steps or max(1, math.ceil(self.task.local_epochs * n_batches))
        return batches, steps, len(seqs), int(seqs.lengths.sum())

    def onnx_updater(self, threads: int) -> OnnxLocalUpdate:
        """``local_update.onnx`` for this model shape and sequence length (exported once, cached on disk)."""
        if self._onnx is None:
            path = onnx_graph(self.model, self.task.seq_len, self.cache_dir)
            self._onnx = OnnxLocalUpdate(path, intra_op_threads=threads)
        return self._onnx

    def run(
        self,
        weights: np.ndarray,
        phone_ids: list[int],
        phone_seeds: list[int],
        round_idx: int,
        model_version: int,
        threads: int,
    ) -> HostResult:
        """Train and encode every listed phone (phones without any text are left out of the reply).

        Phones go through training and encoding ``PHONES_PER_CHUNK`` at a time, ordered by their number
        of steps (similar phones vectorise well), so the host holds at most that many deltas at once.
        """
        if len(phone_ids) != len(phone_seeds):
            raise PhoneHostError("phone-ids and phone-seeds differ in length")
        torch.set_num_threads(threads)
        users = self.population.user_of(np.asarray(phone_ids, np.int64)) if phone_ids else np.zeros(0, np.int64)
        work = [
            (phone, *self.phone_batches(user, seed), seed)
            for phone, user, seed in zip(phone_ids, users.tolist(), phone_seeds, strict=True)
            if self.encoded(user)
        ]
        work.sort(key=lambda w: -w[2])
        out = HostResult([], [], [], [], [], 0.0, 0.0)
        for start in range(0, len(work), PHONES_PER_CHUNK):
            chunk = work[start : start + PHONES_PER_CHUNK]
            t0 = time.perf_counter()
            deltas, losses = self.train(
                weights, [w[1] for w in chunk], [w[2] for w in chunk], [w[5] for w in chunk], threads
            )
            t1 = time.perf_counter()
            ids = [w[0] for w in chunk]
            encoded = self.pipeline.encode(deltas, ids, round_idx, model_version, seed=self.task.run_seed)
            out.phone_ids.extend(ids)
            out.payloads.extend(encoded.messages)
            out.examples.extend(w[3] for w in chunk)
            out.tokens.extend(w[4] for w in chunk)
            out.losses.extend(losses)
            out.train_s += t1 - t0
            out.encode_s += time.perf_counter() - t1
        return out

    def train(
        self, weights: np.ndarray, batches: list[Batches], steps: list[int], seeds: list[int], threads: int
    ) -> tuple[np.ndarray, list[float]]:
        """(deltas [P, D], mean step losses) of phones with these batches, step counts and round seeds."""
        task = self.task
        if task.engine == "torch":
            result = train_phones(
                self.model,
                weights,
                batches,
                steps,
                lr=task.lr,
                grad_clip=task.grad_clip,
                delta_clip=task.delta_clip,
                group=task.phone_group or None,
                dropout=task.dropout,
                seeds=seeds,
            )
            return result.deltas, [float(x) for x in result.losses]
        updater = self.onnx_updater(threads)
        deltas = np.empty((len(batches), self.model.num_parameters()), np.float32)
        losses = []
        for i, (b, k) in enumerate(zip(batches, steps, strict=True)):
            update = updater(weights, b, steps=k, lr=task.lr, grad_clip=task.grad_clip, delta_clip=task.delta_clip)
            deltas[i] = update.delta
            losses.append(float(np.mean(update.losses)))
        return deltas, losses


def onnx_graph(model: ModelConfig, seq_len: int, cache_dir: str | None = None) -> Path:
    """Path of ``local_update.onnx`` for a model shape and sequence length, exporting it on first use.

    The export goes to a private temporary folder that is renamed into place, so concurrent hosts
    sharing a cache folder never read a half-written graph.
    """
    model = model.resolved()
    key = hashlib.sha256(f"{model.model_dump_json()}|{seq_len}".encode()).hexdigest()[:16]
    root = Path(cache_dir or tempfile.gettempdir()) / "fedkey-onnx"
    final = root / key
    path = final / "local_update.onnx"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
    try:
        export_train_graphs(model, seq_len, tmp / "train_step.onnx", tmp / "local_update.onnx")
        try:
            os.rename(tmp, final)
        except OSError:  # another host finished first
            if not path.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


_HOSTS: dict[tuple[str, ...], PhoneHost] = {}


def host_for(task: HostTask, cache_dir: str | None = None) -> PhoneHost:
    """The process's cached host for this task (built on first use, reused every later round).

    The cached state depends only on :meth:`HostTask.host_key`; the rest of the task is the round's
    (the server may change it between rounds, e.g. the learning rate of a schedule).
    """
    key = task.host_key()
    if key not in _HOSTS:
        _HOSTS.clear()  # a new run in the same process: drop the previous run's caches
        _HOSTS[key] = PhoneHost(task, cache_dir)
    host = _HOSTS[key]
    host.task = task
    return host


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run every phone listed in the message and return each phone's encoded update."""
    config = msg.content.config_records["config"]
    task = HostTask.from_config(config, context.node_config)
    cache_dir = context.node_config.get("cache-dir")
    host = host_for(task, str(cache_dir) if cache_dir else None)
    weights = msg.content.array_records["arrays"]["weights"].numpy().astype(np.float32, copy=False)
    result = host.run(
        weights,
        [int(i) for i in config["phone-ids"]],  # type: ignore[union-attr]
        [int(s) for s in config["phone-seeds"]],  # type: ignore[union-attr]
        int(config["round"]),  # type: ignore[arg-type]
        int(config["model-version"]),  # type: ignore[arg-type]
        task.threads,
    )
    return Message(content=result.to_content(), reply_to=msg)
