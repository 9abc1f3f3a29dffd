"""The fleet strategy: a Flower ``Strategy`` that runs production-style rounds over many phones per node.

One round (Bonawitz et al. 2019: selection -> configuration -> reporting), ``configure_train``:

1. Ask the :class:`~fedkey.server.fleet.Fleet` which phones are eligible at the simulated time.
2. Select: ``uniform`` draws ``ceil(cohort_size * over_selection)`` of them (the goal count is
   ``cohort_size``); ``poisson`` keeps each eligible phone with probability ``poisson_rate`` (the
   sampling DP-FedAvg's amplification assumes).
3. Simulate reporting with the fleet's device model: dropouts, and the round closing at the deadline
   or at the goal count's report; later phones are stragglers. **Phones that will not report are not
   trained**: their work would be discarded anyway, so the simulation only pays for reports that
   count (their download is still counted in ``bytes_down``).
4. Cut the reporting phones, in phone-id order, into parts of at most ``phones_per_message`` (and at
   least one part per phone host), deal the parts round-robin to the phone hosts (Flower nodes) and
   send one message per part: the global weights (``ArrayRecord`` "arrays": one flat float32 vector
   "weights") and a ``ConfigRecord`` "config" with ``phone-ids``, ``phone-seeds``, ``round``,
   ``model-version`` and the run's task settings (local training, pipeline, ...), which this class
   passes through untouched. A host runs all the phones a message lists.

``aggregate_train`` reads each part's reply — ``ConfigRecord`` "updates" (``phone-ids``, ``payloads``:
one wire-format message per phone) and ``MetricRecord`` "metrics" (per-phone ``examples``, ``tokens``,
``loss`` lists) — and decodes every phone's update on its own. An update is rejected (counted, logged,
the round goes on) when it does not decode (a typed ``WireFormatError``), claims another phone, round
or model version, was not asked for, or comes with no examples; a part whose reply is an error, or
never comes, loses its phones' updates the same way. Replies are read as they come (``replies`` may be
a generator): a part is decoded once every earlier part has been, and then let go, so the server holds
the updates of a few parts at a time, not of the cohort. Accepted updates are combined in phone-id
order, so the result depends neither on reply order nor on how many hosts there are:

- without central DP: the example-weighted mean of the deltas;
- with central DP (DP-FedAvg, McMahan et al. 2018): each decoded delta clipped to C, summed, plus
  N(0, (zC)^2), divided by the fixed ``cohort_size`` (a data-independent denominator); the round is
  recorded with the ``privacy`` accountant, and no round starts that would pass the ε budget.

The server optimizer (FedAvg / FedAvgM / FedAdam / FedYogi) then moves the global weights, and the
simulated clock advances by the round's duration, or by ``round_interval_s`` when that is longer (pace
steering, Bonawitz et al. 2019: the server paces rounds, so a run spans the day and the phones of every
time zone become eligible in turn). Everything is deterministic from the run seed.

The server holds the weights as a numpy vector and no model code: ``configure_evaluate`` sends one
``evaluate`` message to a phone host, which evaluates the weights on held-out users, and
:func:`query_initial_weights` asks a host (``query.initial_weights``) for the model's seeded
initialisation. The message formats are the phone host's (``fedkey.device_sim.phone_host``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedkey.models.schedules import Schedule, lr_factor
from fedkey.privacy.config import CentralDpConfig
from fedkey.privacy.mechanisms import clip_rows
from fedkey.protocol.errors import WireFormatError
from fedkey.protocol.pipeline import DecodedUpdate, decode
from fedkey.server.fleet import Fleet, IdArray, RoundOutcome
from fedkey.server.optimizers import ServerOptimizer, ServerOptimizerSettings
from fedkey.server.sampling import sample_poisson, sample_uniform
from fedkey.server.stopping import exchange

if TYPE_CHECKING:  # dp-accounting and scipy (~45 MB) load only in runs with DP
    from fedkey.privacy.accountant import CentralDpAccountant
    from fedkey.privacy.ledger import DeviceLedger

# under the "flwr" logger: its handlers and level apply (per-round lines under `flwr run`, quiet under
# `fedkey simulate`, which shows a progress bar instead)
log = logging.getLogger(f"flwr.{__name__}")

WEIGHTS_KEY = "weights"
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
UPDATES_KEY = "updates"
METRICS_KEY = "metrics"
_DP_NOISE_TAG = 0x6370  # keeps the central noise stream apart from other seeded streams


class StrategyError(ValueError):
    """The strategy was configured inconsistently or asked to run a round it cannot run."""


@dataclass(frozen=True)
class FleetStrategySettings:
    """What the strategy needs; built from the ``simulate`` / ``central_dp`` config sections."""

    cohort_size: int
    over_selection: float = 1.3
    sampling: Literal["uniform", "poisson"] = "uniform"
    poisson_rate: float | None = None
    deadline_s: float = 300.0
    min_reports: int = 1
    seed: int = 0
    start_time_utc_s: float = 0.0
    round_interval_s: float = 0.0  # pace steering: a round starts this long after the last one started
    upload_estimate_bytes: float = 0.0
    optimizer: ServerOptimizerSettings = field(default_factory=ServerOptimizerSettings)
    central_dp: CentralDpConfig | None = None
    local_dp_delta: float | None = None  # per-phone ledger δ when the pipeline has local DP noise
    local_lr_schedule: Schedule = "constant"  # the task's "lr" in round r is scaled by lr_factor(r - 1, rounds)
    rounds: int = 1
    phones_per_message: int = 50

    def __post_init__(self) -> None:
        if self.cohort_size < 1 or self.min_reports < 1 or self.phones_per_message < 1 or self.deadline_s <= 0:
            raise StrategyError("cohort_size, min_reports and phones_per_message must be >= 1 and deadline_s > 0")
        if self.round_interval_s < 0:
            raise StrategyError("round_interval_s must be >= 0")
        if self.sampling == "poisson" and self.poisson_rate is None:
            raise StrategyError("Poisson sampling needs poisson_rate")


@dataclass
class RoundRecord:
    """What one round did (the server's half of a ``metrics.jsonl`` line)."""

    round: int
    sim_time_s: float
    selected: int
    reported: int
    dropped: int
    stragglers: int
    rejected: int
    accepted: int
    bytes_up: int
    bytes_down: int
    loss: float | None
    epsilon: float | None
    delta: float | None
    model_updated: bool
    rejections: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Part:
    """One message of a round: the phone host it went to, the phones it lists, the message itself
    (whose id, set when the grid pushes it, is what the reply answers)."""

    node: int
    phones: frozenset[int]
    message: Message


@dataclass
class _Plan:
    round: int
    model_version: int
    selected: int
    reported_ids: IdArray
    dropped: int
    stragglers: int
    close_s: float
    bytes_down: int
    parts: list[_Part]  # in phone-id order


@dataclass(frozen=True)
class _Report:
    phone_id: int
    examples: int
    loss: float


class FleetStrategy(Strategy):
    """Sampling, over-selection, deadlines, per-phone decode, weighted aggregation, server optimizer, DP."""

    def __init__(
        self,
        settings: FleetStrategySettings,
        fleet: Fleet,
        initial_weights: np.ndarray,
        task_config: Mapping[str, ConfigRecordValues],
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.weights = np.asarray(initial_weights, dtype=np.float32).copy()
        self.dim = int(self.weights.shape[0])
        self.task_config = dict(task_config)
        self.optimizer = ServerOptimizer(settings.optimizer, self.dim)
        dp = settings.central_dp
        self.accountant: CentralDpAccountant | None = None
        self.ledger: DeviceLedger | None = None
        if dp is not None:
            from fedkey.privacy.accountant import CentralDpAccountant

            self.accountant = CentralDpAccountant(dp.delta, dp.accountant, dp.target_epsilon)
        if settings.local_dp_delta is not None:
            from fedkey.privacy.ledger import DeviceLedger

            self.ledger = DeviceLedger(settings.local_dp_delta)
        self.model_version = 0
        self.elapsed_s = 0.0
        self.participation: dict[int, int] = {}
        self._plan: _Plan | None = None
        self._epsilons: dict[int, float] = {}

    # ---- Flower Strategy interface ------------------------------------------------------------

    def summary(self) -> None:
        """Log the strategy's settings."""
        s = self.settings
        log.info(
            "FleetStrategy: %s sampling, cohort %d (over-selection %.2f), deadline %.0f s, optimizer %s, "
            "central DP %s, fleet of %d phones",
            s.sampling,
            s.cohort_size,
            s.over_selection,
            s.deadline_s,
            s.optimizer.name,
            "on" if s.central_dp else "off",
            self.fleet.size,
        )

    def budget_exhausted(self) -> bool:
        """True when one more round would take central-DP ε past the budget (training must stop)."""
        dp = self.settings.central_dp
        if dp is None or dp.target_epsilon is None:
            return False
        return self._central_epsilon(1) > dp.target_epsilon

    def _central_epsilon(self, more_rounds: int) -> float:
        """Central ε at δ after ``more_rounds`` more rounds; every round has the same spec, so values
        are cached by round count (one dp-accounting composition per round, not two)."""
        dp = self.settings.central_dp
        assert self.accountant is not None and dp is not None
        total = self.accountant.rounds + more_rounds
        if total not in self._epsilons:
            self._epsilons[total] = (
                self.accountant.epsilon_after(dp.round_spec(), more_rounds)
                if more_rounds
                else self.accountant.epsilon()
            )
        return self._epsilons[total]

    def simulate_reporting(self, server_round: int) -> RoundOutcome:
        """Who is eligible at the simulated time, who is selected, and who reports by the round's close.
        Trains nothing and leaves the clock alone (see :meth:`advance_clock`)."""
        s = self.settings
        now = s.start_time_utc_s + self.elapsed_s
        eligible = self.fleet.eligible_ids(now)
        if s.sampling == "uniform":
            selected = sample_uniform(
                eligible, s.cohort_size, seed=s.seed, round_idx=server_round, over_selection=s.over_selection
            )
            target: int | None = s.cohort_size
        else:
            assert s.poisson_rate is not None
            selected = sample_poisson(eligible, s.poisson_rate, seed=s.seed, round_idx=server_round)
            target = None
        return self.fleet.simulate_round(
            selected,
            round_idx=server_round,
            deadline_s=s.deadline_s,
            download_bytes=4 * self.dim,
            upload_bytes=s.upload_estimate_bytes,
            target_reports=target,
        )

    def advance_clock(self, close_s: float) -> None:
        """Move the simulated clock to the next round's start (pace steering: at least the interval)."""
        self.elapsed_s += max(close_s, self.settings.round_interval_s)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Select, simulate reporting, and build one message per phone host for the reporting phones."""
        s = self.settings
        if self.budget_exhausted():
            raise StrategyError(f"round {server_round}: the central DP budget is exhausted")
        outcome = self.simulate_reporting(server_round)
        model_bytes = 4 * self.dim
        reporting = np.sort(np.asarray(outcome.ids[outcome.reported], dtype=np.int64))
        nodes = sorted(grid.get_node_ids())
        if reporting.size and not nodes:
            raise StrategyError("no phone host (Flower node) is connected")
        seeds = self.fleet.phone_seeds(reporting, server_round)
        parts: list[_Part] = []
        base = dict(self.task_config) | dict(config)
        base["lr"] = float(base["lr"]) * lr_factor(s.local_lr_schedule, server_round - 1, s.rounds)  # type: ignore[arg-type]
        count = min(reporting.size, max(len(nodes), -(-reporting.size // s.phones_per_message)))
        splits = zip(np.array_split(reporting, count), np.array_split(seeds, count), strict=True) if count else ()
        for j, (ids, part_seeds) in enumerate(splits):
            task = base | {
                "phone-ids": [int(i) for i in ids],
                "phone-seeds": [int(x) for x in part_seeds],
                "round": server_round,
                "model-version": self.model_version,
            }
            content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: ConfigRecord(task)})
            node = nodes[j % len(nodes)]
            message = Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            parts.append(_Part(node, frozenset(int(i) for i in ids), message))
        self._plan = _Plan(
            round=server_round,
            model_version=self.model_version,
            selected=int(outcome.ids.size),
            reported_ids=reporting,
            dropped=int(np.sum(outcome.dropped)),
            stragglers=int(np.sum(outcome.straggler)),
            close_s=float(outcome.close_s),
            bytes_down=model_bytes * int(outcome.ids.size),
            parts=parts,
        )
        return [p.message for p in parts]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode every phone's update, reject bad ones, aggregate, step the server optimizer."""
        record = self.aggregate_round(server_round, replies)
        metrics = {k: v for k, v in asdict(record).items() if isinstance(v, int | float) and not isinstance(v, bool)}
        return (self.arrays() if record.model_updated else None), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One ``evaluate`` message to one phone host (a different one each round): it evaluates
        ``arrays`` on held-out users as ``config`` says (the phone host's ``EvalTask`` keys); the server
        holds no model code."""
        nodes = sorted(grid.get_node_ids())
        if not nodes:
            raise StrategyError("no phone host (Flower node) is connected to evaluate on")
        content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: ConfigRecord(dict(self.task_config) | dict(config))})
        return [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=nodes[server_round % len(nodes)])
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The evaluating host's metrics; raises when it failed (a run's figures must not go missing)."""
        return _only_reply(replies, "held-out evaluation").content.metric_records[METRICS_KEY]

    # ---- the round's second half ---------------------------------------------------------------

    def arrays(self) -> ArrayRecord:
        """The current global weights as the ArrayRecord sent to phone hosts."""
        return ArrayRecord({WEIGHTS_KEY: Array(self.weights)})

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundRecord:
        """Like :meth:`aggregate_train`, returning the full :class:`RoundRecord`."""
        plan = self._plan
        if plan is None or plan.round != server_round:
            raise StrategyError(f"aggregate_train for round {server_round} without configure_train")
        self._plan = None
        rejections: dict[str, int] = {}

        def reject(reason: str, count: int = 1) -> None:
            rejections[reason] = rejections.get(reason, 0) + count

        s = self.settings
        dp = s.central_dp
        # one running sum, updates decoded one at a time: memory stays O(d) whatever the cohort
        total = np.zeros(self.dim, np.float64)
        accepted: list[_Report] = []
        ledger_records: list[dict[str, Any]] = []
        bytes_up = 0
        for reports, part_bytes in self._parts_in_order(plan, replies, reject):
            bytes_up += part_bytes
            reports.reverse()
            while reports:  # popped: the part's payloads are let go before the next part is awaited
                r, payload = reports.pop()
                update = self._decode(plan, r, payload, reject)
                if update is None:
                    continue
                if dp is not None:
                    clipped, _ = clip_rows(update.delta[None, :], dp.clip_norm)
                    total += clipped[0]
                else:
                    total += r.examples * update.delta.astype(np.float64)
                accepted.append(r)
                ledger_record = update.ledger_record()
                if ledger_record is not None:
                    ledger_records.append(ledger_record)
        # nothing is recorded until every reply has been read: a run stopped mid-round resumes cleanly
        if self.ledger is not None:
            for ledger_record in ledger_records:
                self.ledger.record(**ledger_record)
        updated = False
        if dp is not None:
            self._apply(self._dp_mean(total, dp, server_round), server_round)
            assert self.accountant is not None
            self.accountant.step(dp.round_spec())  # configure_train refused a round past the budget
            updated = True
        elif len(accepted) >= s.min_reports:
            self._apply((total / sum(r.examples for r in accepted)).astype(np.float32), server_round)
            updated = True
        for r in accepted:
            self.participation[r.phone_id] = self.participation.get(r.phone_id, 0) + 1
        if updated:
            self.model_version += 1
        self.advance_clock(plan.close_s)
        examples = sum(r.examples for r in accepted)
        loss = sum(r.loss * r.examples for r in accepted) / examples if examples else None
        epsilon, delta = self.privacy_spent()
        for reason, count in rejections.items():
            log.warning("round %d: rejected %d update(s): %s", server_round, count, reason)
        return RoundRecord(
            round=server_round,
            sim_time_s=self.elapsed_s,
            selected=plan.selected,
            reported=int(plan.reported_ids.size),
            dropped=plan.dropped,
            stragglers=plan.stragglers,
            rejected=sum(rejections.values()),
            accepted=len(accepted),
            bytes_up=bytes_up,
            bytes_down=plan.bytes_down,
            loss=loss,
            epsilon=epsilon,
            delta=delta,
            model_updated=updated,
            rejections=rejections,
        )

    def privacy_spent(self) -> tuple[float | None, float | None]:
        """(ε, δ): central DP-FedAvg if on, else the largest per-phone local-DP ε, else (None, None)."""
        if self.accountant is not None:
            return self._central_epsilon(0), self.accountant.delta
        if self.ledger is not None:
            return self.ledger.max_epsilon(), self.ledger.delta
        return None, None

    @staticmethod
    def _parts_in_order(
        plan: _Plan, replies: Iterable[Message], reject: Any
    ) -> Iterator[tuple[list[tuple[_Report, bytes]], int]]:
        """Each part's (report, payload) pairs in phone-id order and its uploaded bytes, part by part in
        order, as soon as a part and every earlier one have answered (a later part's reply waits); parts
        that never answer lose their phones. Replies to other messages, and second replies, are ignored."""
        index = {p.message.metadata.message_id: j for j, p in enumerate(plan.parts)}
        waiting: dict[int, Message] = {}
        done = 0  # parts yielded
        for msg in replies:
            j = index.get(msg.metadata.reply_to_message_id)
            if j is None or j < done or j in waiting or msg.metadata.src_node_id != plan.parts[j].node:
                continue
            waiting[j] = msg
            while done in waiting:
                yield _part_reports(plan.parts[done], waiting.pop(done), reject)
                done += 1
        for j in range(done, len(plan.parts)):
            yield _part_reports(plan.parts[j], waiting.pop(j, None), reject)

    def _decode(self, plan: _Plan, report: _Report, payload: bytes, reject: Any) -> DecodedUpdate | None:
        """One phone's update, or None (counted as rejected) if it does not decode or does not match."""
        try:
            update = decode(payload, self.dim)
        except WireFormatError as err:
            reject(f"undecodable ({type(err).__name__})")
            return None
        h = update.header
        if (h.phone_id, h.round, h.model_version) != (report.phone_id, plan.round, plan.model_version):
            reject("wrong phone, round or model version in header")
            return None
        if not np.isfinite(update.delta).all():
            reject("non-finite update")
            return None
        return update

    def _dp_mean(self, clipped_sum: np.ndarray, dp: CentralDpConfig, server_round: int) -> np.ndarray:
        """DP-FedAvg's server half on the sum of clipped deltas: add N(0, (zC)^2), divide by the fixed
        cohort size (as ``privacy.mechanisms.central_noised_sum``, with the sum built one phone at a time)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.settings.seed, server_round, _DP_NOISE_TAG]))
        noised = clipped_sum + rng.standard_normal(self.dim) * dp.noise_multiplier * dp.clip_norm
        return (noised / self.settings.cohort_size).astype(np.float32)

    def _apply(self, pseudo_gradient: np.ndarray, server_round: int) -> None:
        s = self.settings
        scale = lr_factor(s.optimizer.lr_schedule, server_round - 1, s.rounds, s.optimizer.warmup_rounds)
        self.weights = self.optimizer.step(self.weights, pseudo_gradient, scale)

    # ---- checkpoint state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that a resumed run needs to continue identically."""
        ids = sorted(self.participation)
        return {
            "model_version": self.model_version,
            "elapsed_s": self.elapsed_s,
            "optimizer": self.optimizer.state_dict(),
            "accountant": json.dumps(self.accountant.to_dict()) if self.accountant else "",
            "ledger": self.ledger.to_json() if self.ledger else "",
            "participation_ids": np.array(ids, np.int64),
            "participation_counts": np.array([self.participation[i] for i in ids], np.int64),
        }

    def load_state_dict(self, weights: np.ndarray, state: Mapping[str, Any]) -> None:
        """Restore the weights and :meth:`state_dict` output."""
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (self.dim,):
            raise StrategyError(f"checkpoint weights have shape {weights.shape}, the model needs ({self.dim},)")
        self.weights = weights.copy()
        self.model_version = int(state["model_version"])
        self.elapsed_s = float(state["elapsed_s"])
        self.optimizer.load_state_dict({k: np.asarray(v) for k, v in state["optimizer"].items()})
        if self.accountant is not None:
            if not state["accountant"]:
                raise StrategyError("central DP is on but the checkpoint has no accountant state")
            self.accountant = type(self.accountant).from_dict(json.loads(state["accountant"]))
            self._epsilons = {}
        if self.ledger is not None and state["ledger"]:
            self.ledger = type(self.ledger).from_json(state["ledger"])
        ids = np.asarray(state["participation_ids"]).tolist()
        counts = np.asarray(state["participation_counts"]).tolist()
        self.participation = dict(zip(ids, counts, strict=True))


def query_initial_weights(grid: Grid, task_config: Mapping[str, ConfigRecordValues], timeout_s: float) -> np.ndarray:
    """The run's initial weights, asked of one phone host (``query.initial_weights``: the model's seeded
    initialisation lives with the model code, on the hosts)."""
    nodes = sorted(grid.get_node_ids())
    if not nodes:
        raise StrategyError("no phone host (Flower node) is connected to ask for the initial weights")
    content = RecordDict({CONFIG_KEY: ConfigRecord(dict(task_config))})
    message = Message(content=content, message_type=f"{MessageType.QUERY}.initial_weights", dst_node_id=nodes[0])
    reply = _only_reply(exchange(grid, [message], timeout_s, resumable_after=0), "the initial-weights query")
    return reply.content.array_records[ARRAYS_KEY][WEIGHTS_KEY].numpy().astype(np.float32)


def _only_reply(replies: Iterable[Message], what: str) -> Message:
    replies = list(replies)
    if len(replies) != 1:
        raise StrategyError(f"{what}: expected one reply from a phone host, got {len(replies)}")
    if replies[0].has_error():
        error = replies[0].error
        raise StrategyError(f"{what} failed on phone host {replies[0].metadata.src_node_id}: {error.reason}")
    return replies[0]


def _part_reports(part: _Part, msg: Message | None, reject: Any) -> tuple[list[tuple[_Report, bytes]], int]:
    """A part's valid (report, payload) pairs in phone-id order and the bytes its reply uploaded; what is
    wrong with it (no reply, an error, a malformed reply, phones not asked...) goes to ``reject``."""
    if msg is None:
        reject("phone host did not answer", len(part.phones))
        return [], 0
    if msg.has_error():
        log.warning("phone host %d failed: %s", part.node, msg.error.reason)
        reject("phone host failed", len(part.phones))
        return [], 0
    try:
        ids, payloads, examples, losses = _read_reply(msg.content)
    except (KeyError, TypeError, ValueError) as err:
        log.warning("phone host %d sent a malformed reply: %s", part.node, err)
        reject("malformed host reply", len(part.phones))
        return [], 0
    # Flower's records sit in reference cycles (each holds bound methods of itself), so a reply is freed
    # by the cyclic garbage collector, not when the last reference goes, and the collector runs on object
    # counts, not bytes: a round's parts piled up in the server (a 50-phone part of dense updates is
    # 250 MB). Taking the payloads out of the reply's record frees each one once it is decoded.
    del msg.content.config_records[UPDATES_KEY]["payloads"]
    reports: dict[int, tuple[_Report, bytes]] = {}
    for phone, payload, n, loss in zip(ids, payloads, examples, losses, strict=True):
        if phone not in part.phones or phone in reports:
            reject("phone not asked (or twice)")
        elif n < 1 or not np.isfinite(loss):
            reject("no examples or non-finite loss")
        else:
            reports[phone] = (_Report(phone, n, loss), payload)
    missing = len(part.phones - set(ids))
    if missing:
        reject("missing from host reply", missing)
    return [reports[p] for p in sorted(reports)], sum(len(p) for p in payloads)


def _read_reply(content: RecordDict) -> tuple[list[int], list[bytes], list[int], list[float]]:
    """(phone ids, payloads, examples, losses) of a host reply; raises on a malformed one."""
    updates = content.config_records[UPDATES_KEY]
    metrics = content.metric_records[METRICS_KEY]
    ids = [int(i) for i in updates["phone-ids"]]  # type: ignore[union-attr]
    payloads = list(updates["payloads"])  # type: ignore[arg-type]
    examples = [int(n) for n in metrics["examples"]]  # type: ignore[union-attr]
    losses = [float(x) for x in metrics["loss"]]  # type: ignore[union-attr]
    if not (len(ids) == len(payloads) == len(examples) == len(losses)):
        raise ValueError("phone-ids, payloads, examples and loss differ in length")
    if not all(isinstance(p, bytes) for p in payloads):
        raise TypeError("payloads must be bytes")
    return ids, payloads, examples, losses
