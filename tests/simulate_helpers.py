"""Helpers for the simulation tests: a tiny run configuration and an in-process stand-in for Flower's Grid."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedkey.config import FedkeyConfig, load_config
from fedkey.device_sim import phone_host

TINY = [
    "model.embed_dim=8",
    "model.hidden_dim=16",
    "simulate.rounds=3",
    "simulate.cohort_size=6",
    "simulate.seq_len=8",
    "simulate.local_batch_size=4",
    "simulate.max_messages_per_phone=8",
    "simulate.eval_users=3",
    "simulate.eval_positions=40",
    "simulate.eval_every=2",
    "eval.max_positions=60",
    "simulate.export_bundle=false",
]


FEDKEY = str(Path(sys.executable).with_name("fedkey"))


def run_fedkey(*args: str, overrides: Iterable[str] = (), python: bool = False) -> subprocess.CompletedProcess[str]:
    """`fedkey ARGS --set O ...` (with ``python``: `python ARGS --set O ...`) in a child process with one
    torch thread; a non-zero exit fails the test."""
    proc = subprocess.run(
        [sys.executable if python else FEDKEY, *args, *(a for o in overrides for a in ("--set", o))],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tiny_config(*overrides: str) -> FedkeyConfig:
    """A configuration small enough for unit tests (tiny model, few phones, few positions)."""
    return load_config(None, [*TINY, *overrides])


Tamper = Callable[[Message], Message]


class LocalGrid:
    """Delivers each message straight to the phone-host ClientApp (routed by message type), in this process.

    The same message flow as Flower's simulation engine without Ray: fast enough for unit tests.
    ``tamper`` may rewrite a host's reply (to test rejection).
    """

    def __init__(self, n_nodes: int = 2, tamper: Tamper | None = None) -> None:
        # what Flower's runtime sets before a ServerApp builds messages
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self.nodes = [101 + i for i in range(n_nodes)]
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in self.nodes
        }
        self.tamper = tamper
        self.sent: list[Message] = []
        self.replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Runs each message's ClientApp at once; its reply waits for :meth:`pull_messages`."""
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}-{i}"
            self.sent.append(msg)
            reply = phone_host.app(msg, self.contexts[msg.metadata.dst_node_id])
            self.replies[msg.metadata.message_id] = self.tamper(reply) if self.tamper else reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))
