"""A phone host's per-process state and work: its data, population and update pipeline, the local
training and encoding of the phones a message lists, held-out evaluation and the initial weights.

The torch side of :mod:`fedkey.device_sim.phone_host`: that module's ClientApp handlers import this
one on their first message, so a process that only loads the ClientApp (the driver of Flower's
simulation, which also runs the torch-free ServerApp) never imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedkey.device_sim.batched_training import train_phones
from fedkey.device_sim.federated_data import FederatedData, sample_messages
from fedkey.device_sim.phone_host import EvalTask, HostResult, HostTask, PhoneHostError
from fedkey.device_sim.population import Population
from fedkey.models.cifg_lstm import model_from_weights
from fedkey.models.evaluate import evaluate_model
from fedkey.models.model_config import ModelConfig
from fedkey.models.onnx_local_update import Batches, OnnxLocalUpdate
from fedkey.models.onnx_train import export_train_graphs
from fedkey.models.sequences import SequenceBatch, encode_sequences, window_count
from fedkey.protocol.pipeline import UpdatePipeline

#: Phones trained and encoded together in a host: bounds the deltas, and the encoder's temporaries,
#: held at once (4 x 5 MB for the default model; 4 instead of 16 took the host's peak down by about
#: 45 MB). The trainer gains nothing from more: it trains one phone at a time by default.
PHONES_PER_CHUNK = 4


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
        self._cached_windows: dict[int, int] = {}
        self._onnx: OnnxLocalUpdate | None = None

    def encoded(self, user: int) -> list[list[int]]:
        """A real user's messages as piece ids, cached."""
        if user not in self._encoded:
            self._encoded[user] = self.data.tokenizer.encode_batch(list(self.users[user].messages))
        return self._encoded[user]

    def cached_windows(self, user: int) -> int:
        """The training windows of all of a real user's messages (a phone's whole text cache)."""
        if user not in self._cached_windows:
            self._cached_windows[user] = window_count(self.encoded(user), self.task.seq_len)
        return self._cached_windows[user]

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
        """(batches, steps, examples, tokens) of one phone this round; ``examples``, its update's weight,
        counts the windows it trains on, or with ``update_weight = "cached"`` those of its whole cache.

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
        examples = self.cached_windows(user) if self.task.update_weight == "cached" else len(seqs)
        return batches, steps, examples, int(seqs.lengths.sum())

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

    def evaluate(self, weights: np.ndarray, spec: EvalTask) -> dict[str, float]:
        """Recall@1/@3 and perplexity of these weights on held-out users (see :class:`EvalTask`)."""
        test_users = self.data.test_users
        if spec.users:
            messages = sample_messages(test_users, spec.users, self.task.run_seed)
        else:
            messages = [m for u in test_users for m in u.messages]
        torch.set_num_threads(self.task.threads)
        return evaluate_model(
            model_from_weights(self.model, weights),
            self.data.tokenizer,
            self.data.lexicon,
            messages,
            max_positions=spec.max_positions,
            beam=spec.beam,
            max_word_pieces=spec.max_word_pieces,
        )


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
