"""The fleet strategy with real phone hosts over an in-process grid: selection, deadlines, rejection, DP."""

from __future__ import annotations

import dataclasses
import gc
import math
import sys
import weakref

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, RecordDict
from simulate_helpers import LocalGrid, tiny_config

from fedkey.coverage import Coverage, schedule_coverage
from fedkey.device_sim.federated_data import FederatedData, sample_messages
from fedkey.device_sim.phone_host import EvalTask, HostTask
from fedkey.models.cifg_lstm import initial_weights, model_from_weights
from fedkey.models.evaluate import evaluate_model
from fedkey.models.schedules import lr_factor
from fedkey.server.stopping import RunInterrupted
from fedkey.server.strategy import FleetStrategy, StrategyError, query_initial_weights
from fedkey.simulate import build_setup

torch.set_num_threads(1)


def strategy_for(prepared, *overrides: str) -> FleetStrategy:
    setup = build_setup(tiny_config(*overrides), prepared.root)
    return FleetStrategy(
        setup.strategy_settings,
        setup.fleet,
        initial_weights(setup.model_config, setup.config.simulate.seed),
        setup.task.to_config(),
    )


def run_round(strategy: FleetStrategy, grid: LocalGrid, rnd: int):
    messages = list(strategy.configure_train(rnd, strategy.arrays(), ConfigRecord(), grid))
    return strategy.aggregate_round(rnd, grid.send_and_receive(messages)), messages


def phones_sent(messages: list[Message]) -> list[int]:
    return sorted(i for m in messages for i in m.content.config_records["config"]["phone-ids"])


def test_over_selection_goal_count_and_only_reporting_phones_train(prepared):
    strategy = strategy_for(prepared, "simulate.cohort_size=5", "simulate.over_selection=1.5")
    record, messages = run_round(strategy, LocalGrid(n_nodes=2), 1)
    assert record.selected == math.ceil(5 * 1.5)
    assert record.reported <= 5  # the round closes at the goal count
    assert record.selected == record.reported + record.dropped + record.stragglers
    assert len(messages) == 2  # one message per phone host, each listing several phones
    assert len(phones_sent(messages)) == record.reported == record.accepted
    assert record.model_updated and record.rejected == 0


def test_pace_steering_spaces_rounds_by_the_interval_unless_a_round_runs_longer(prepared):
    paced = strategy_for(prepared, "simulate.cohort_size=5", "simulate.round_interval_s=3600")
    for rnd in (1, 2):
        record, _ = run_round(paced, LocalGrid(), rnd)
        assert record.sim_time_s == pytest.approx(3600 * rnd)
    short = strategy_for(prepared, "simulate.cohort_size=5", "simulate.round_interval_s=0.001")
    record, _ = run_round(short, LocalGrid(), 1)
    assert record.sim_time_s > 1  # the round itself took longer than the interval


@pytest.mark.parametrize("interval", [0, 3600])
def test_schedule_coverage_replays_the_rounds_a_run_makes(prepared, interval):
    overrides = ("simulate.cohort_size=4", "simulate.over_selection=1.5", f"simulate.round_interval_s={interval}")
    strategy = strategy_for(prepared, *overrides)
    records = []
    for rnd in (1, 2, 3):
        records.append(run_round(strategy, LocalGrid(), rnd)[0])
    coverage = schedule_coverage(build_setup(tiny_config(*overrides), prepared.root), rounds=3)
    assert list(coverage.per_round) == [r.reported for r in records]
    assert {i: int(n) for i, n in enumerate(coverage.reports) if n} == strategy.participation
    assert coverage.span_s == pytest.approx(strategy.elapsed_s)
    never = coverage.reports == 0
    assert 0 < coverage.phones_never == never.sum() < len(never)
    assert coverage.text_never == pytest.approx(coverage.text[never].sum() / coverage.text.sum())


def test_messages_trained_caps_each_report_at_the_phones_limit():
    coverage = Coverage(
        rounds=4, span_s=0.0, reports=np.array([0, 2, 3]), text=np.array([10, 100, 5]), per_round=np.ones(4)
    )
    np.testing.assert_array_equal(coverage.messages_trained(64, 2.0), [0.0, 256.0, 30.0])
    np.testing.assert_array_equal(coverage.messages_trained(0, 1.5), [0.0, 300.0, 22.5])  # 0: no cap


def test_tight_deadline_makes_stragglers_and_a_shorter_round(prepared):
    strategy = strategy_for(
        prepared,
        "simulate.cohort_size=20",
        "population.size=500",
        "population.availability.daytime_floor=1.0",
        "population.availability.peak_probability=1.0",
        "population.devices.download_median_mb_s=0.01",
    )
    fastest = strategy.fleet.fastest_round_s(4 * strategy.dim, strategy.settings.upload_estimate_bytes)
    deadline = fastest * 1.05
    strategy.settings = dataclasses.replace(strategy.settings, deadline_s=deadline)
    record, messages = run_round(strategy, LocalGrid(), 1)
    assert record.stragglers > 0
    assert record.reported + record.dropped + record.stragglers == record.selected
    assert record.sim_time_s == pytest.approx(deadline)  # the goal count was not reached: the deadline closed it
    outcome = strategy.fleet.simulate_round(
        np.array(phones_sent(messages)),
        round_idx=1,
        deadline_s=1e9,
        download_bytes=4 * strategy.dim,
        upload_bytes=strategy.settings.upload_estimate_bytes,
        target_reports=None,
    )
    assert (outcome.duration_s <= deadline).all()  # every phone trained had made the deadline


def test_poisson_selection_rate(prepared):
    strategy = strategy_for(
        prepared,
        "simulate.sampling='poisson'",
        "simulate.poisson_rate=0.5",
        "population.availability.daytime_floor=1.0",
        "population.availability.peak_probability=1.0",
    )
    n = strategy.fleet.size
    counts = []
    for rnd in range(1, 41):
        strategy.configure_train(rnd, strategy.arrays(), ConfigRecord(), LocalGrid())
        counts.append(strategy._plan.selected)  # type: ignore[union-attr]
    assert abs(np.mean(counts) - 0.5 * n) < 4 * math.sqrt(0.25 * n / len(counts))
    assert np.std(counts) > 0


def corrupt_first_payload(reply: Message) -> Message:
    updates = reply.content.config_records["updates"]
    payloads = list(updates["payloads"])
    bad = bytearray(payloads[0])
    bad[len(bad) // 2] ^= 0xFF
    payloads[0] = bytes(bad)
    updates["payloads"] = payloads
    return reply


def test_a_corrupt_update_is_rejected_and_the_round_goes_on(prepared):
    strategy = strategy_for(prepared)
    before = strategy.weights.copy()
    record, _ = run_round(strategy, LocalGrid(n_nodes=2, tamper=corrupt_first_payload), 1)
    assert record.rejected == 2  # the first phone of each host
    assert record.accepted == record.reported - 2 > 0
    assert record.model_updated and not np.array_equal(before, strategy.weights)
    assert any("undecodable" in reason for reason in record.rejections)


def test_a_replayed_update_from_another_round_is_rejected(prepared):
    strategy = strategy_for(prepared)
    grid = LocalGrid(n_nodes=1)
    _, first = run_round(strategy, grid, 1)
    old = grid.send_and_receive(first)  # round-1 updates (built on model version 0)
    messages = list(strategy.configure_train(2, strategy.arrays(), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    updates = replies[0].content.config_records["updates"]
    stale = old[0].content.config_records["updates"]
    common = set(updates["phone-ids"]) & set(stale["phone-ids"])
    assert common, "the fixed seed puts some phone in both rounds"
    payloads = list(updates["payloads"])
    for phone in common:
        payloads[list(updates["phone-ids"]).index(phone)] = stale["payloads"][list(stale["phone-ids"]).index(phone)]
    updates["payloads"] = payloads
    record = strategy.aggregate_round(2, replies)
    assert record.rejected == len(common)
    assert record.rejections == {"wrong phone, round or model version in header": len(common)}


def test_a_failed_host_loses_only_its_phones(prepared):
    def fail_second(reply: Message) -> Message:
        if reply.metadata.src_node_id == 102:
            return Message(content=RecordDict(), reply_to=reply)  # no updates record: malformed
        return reply

    strategy = strategy_for(prepared)
    record, messages = run_round(strategy, LocalGrid(n_nodes=2, tamper=fail_second), 1)
    lost = len(messages[1].content.config_records["config"]["phone-ids"])
    assert record.rejected == lost and record.accepted == record.reported - lost
    assert record.model_updated


def test_central_dp_accounts_each_round_and_stops_at_the_budget(prepared):
    dp = [
        "simulate.sampling='poisson'",
        "simulate.poisson_rate=0.3",
        "central_dp.noise_multiplier=1.0",
        "central_dp.delta=1e-4",
        "central_dp.accountant='rdp'",
    ]
    probe = strategy_for(prepared, *dp)
    assert probe.accountant is not None
    spec = probe.settings.central_dp.round_spec()  # type: ignore[union-attr]
    two = probe.accountant.epsilon_after(spec, 2)
    three = probe.accountant.epsilon_after(spec, 3)
    strategy = strategy_for(prepared, *dp, f"central_dp.target_epsilon={(two + three) / 2}")
    grid = LocalGrid()
    epsilons = []
    for rnd in (1, 2):
        assert not strategy.budget_exhausted()
        record, _ = run_round(strategy, grid, rnd)
        epsilons.append(record.epsilon)
        assert record.delta == 1e-4
    assert epsilons[0] < epsilons[1] == pytest.approx(two)
    assert strategy.budget_exhausted()  # a third round would pass the budget


def test_same_seed_same_rounds(prepared):
    runs = []
    for _ in range(2):
        strategy = strategy_for(prepared)
        grid = LocalGrid()
        records = [run_round(strategy, grid, r)[0] for r in (1, 2)]
        runs.append((records, strategy.weights.copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    other = strategy_for(prepared, "simulate.seed=1")
    assert run_round(other, LocalGrid(), 1)[0] != runs[0][0][0]


def test_result_does_not_depend_on_hosts_or_message_parts(prepared):
    """Phones train alone and the server sums in phone-id order: how the cohort is cut into messages
    and dealt to hosts changes nothing, to the bit."""
    weights, parts = [], []
    for hosts, per_message in ((1, 50), (3, 50), (1, 2), (2, 1)):
        strategy = strategy_for(prepared, f"simulate.phones_per_message={per_message}")
        record, messages = run_round(strategy, LocalGrid(n_nodes=hosts), 1)
        weights.append(strategy.weights)
        parts.append([len(m.content.config_records["config"]["phone-ids"]) for m in messages])
        assert record.accepted == record.reported == sum(parts[-1])
    assert [len(p) for p in parts] == [1, 3, math.ceil(parts[0][0] / 2), parts[0][0]]
    assert all(max(p) <= per for p, per in zip(parts, (50, 50, 2, 1), strict=True))
    for other in weights[1:]:
        np.testing.assert_array_equal(weights[0], other)


def one_by_one(replies: list, check_released: bool):
    """The replies one at a time, the list letting each go; with ``check_released``, asserts when handing
    on reply i that reply i - 2 is gone (the consumer may still hold the one before)."""
    alive: list[weakref.ref] = []
    for i in range(len(replies)):
        reply, replies[i] = replies[i], None
        gc.collect()
        if check_released and i >= 2:
            assert alive[i - 2]() is None, f"reply {i - 2} is still held"
        alive.append(weakref.ref(reply))
        yield reply
        del reply


def test_replies_are_decoded_as_they_come_and_their_order_does_not_matter(prepared):
    """A part's reply is let go once decoded (the server never holds the cohort's updates), a reply
    that comes early waits for the earlier parts, and the result is the same in any order."""
    results = []
    for order in (1, -1):
        strategy = strategy_for(prepared, "simulate.cohort_size=8", "simulate.phones_per_message=2")
        grid = LocalGrid(n_nodes=1)
        messages = list(strategy.configure_train(1, strategy.arrays(), ConfigRecord(), grid))
        replies = grid.send_and_receive(messages)[::order]
        assert len(replies) >= 4
        record = strategy.aggregate_round(1, one_by_one(replies, check_released=order == 1))
        assert record.accepted == record.reported
        results.append(strategy.weights)
    np.testing.assert_array_equal(results[0], results[1])


def test_a_parts_payloads_go_once_decoded_without_the_garbage_collector(prepared):
    """Flower's records sit in reference cycles, which only the cyclic collector frees, and it runs on
    object counts, not bytes: the server must not leave the payloads in them (before it did, a round's
    dense updates piled up in the server: 2.3 GB at 200 phones). With the collector off, when reply i is
    asked for, every payload of reply i - 2 is referenced by nothing but this test, and of reply i - 1 all
    but the one decoded last."""
    strategy = strategy_for(prepared, "simulate.cohort_size=8", "simulate.phones_per_message=2", "pipeline=[]")
    grid = LocalGrid(n_nodes=1)
    messages = list(strategy.configure_train(1, strategy.arrays(), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    del messages
    assert len(replies) >= 4
    payloads = [list(r.content.config_records["updates"]["payloads"]) for r in replies]

    def references(part: list[bytes]) -> list[int]:
        return [sys.getrefcount(p) for p in part]

    alone = [[n - 1 for n in references(part)] for part in payloads]  # all but the reply's own reference

    def one_at_a_time():
        for i in range(len(replies)):
            reply, replies[i] = replies[i], None
            if i >= 1:  # the part before: all but the payload decoded last are gone
                held = references(payloads[i - 1])
                assert sum(h != a for h, a in zip(held, alone[i - 1], strict=True)) <= 1, f"reply {i - 1}: {held}"
            if i >= 2:
                held = references(payloads[i - 2])
                assert held == alone[i - 2], f"reply {i - 2}'s payloads are still referenced: {held}"
            yield reply
            del reply

    gc.disable()
    try:
        record = strategy.aggregate_round(1, one_at_a_time())
    finally:
        gc.enable()
    assert record.accepted == record.reported == sum(len(p) for p in payloads)


def test_a_round_stopped_while_replies_come_changes_nothing(prepared):
    strategy = strategy_for(
        prepared,
        "simulate.phones_per_message=2",
        "pipeline=[{kind='clip', norm=0.5}, {kind='gaussian_noise', epsilon=2.0, delta=1e-6}]",
    )
    grid = LocalGrid(n_nodes=1)
    before = strategy.weights.copy()
    messages = list(strategy.configure_train(1, strategy.arrays(), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)

    def stopped_after_two():
        yield from replies[:2]
        raise RunInterrupted(0)

    with pytest.raises(RunInterrupted):
        strategy.aggregate_round(1, stopped_after_two())
    assert strategy.ledger is not None and strategy.ledger.phones() == []
    assert strategy.participation == {} and strategy.model_version == 0
    np.testing.assert_array_equal(before, strategy.weights)


def test_local_dp_reports_are_recorded_per_phone(prepared):
    strategy = strategy_for(
        prepared,
        "pipeline=[{kind='clip', norm=0.5}, {kind='gaussian_noise', epsilon=2.0, "
        "delta=1e-6}, {kind='quantize', bits=8}]",
    )
    grid = LocalGrid()
    first, _ = run_round(strategy, grid, 1)
    assert strategy.ledger is not None and first.epsilon is not None
    assert len(strategy.ledger.phones()) == first.accepted
    assert first.epsilon >= 2.0 * 0.99  # one report costs the per-report ε (composed by dp-accounting)
    second, _ = run_round(strategy, grid, 2)
    assert second.epsilon >= first.epsilon
    assert sum(strategy.ledger.participations(p) for p in strategy.ledger.phones()) == first.accepted + second.accepted


def test_cosine_local_lr_schedule_scales_each_rounds_task(prepared):
    rates, weights = {}, {}
    for schedule in ("constant", "cosine"):
        schedule_key = f'simulate.local_lr_schedule="{schedule}"'
        strategy = strategy_for(prepared, "simulate.rounds=4", "simulate.local_lr=0.8", schedule_key)
        grid = LocalGrid()
        rates[schedule], weights[schedule] = [], []
        for rnd in range(1, 5):
            _, messages = run_round(strategy, grid, rnd)
            tasks = {HostTask.from_config(m.content.config_records["config"]).lr for m in messages}
            assert len(tasks) == 1  # every host trains its phones at the round's rate
            rates[schedule].append(tasks.pop())
            weights[schedule].append(strategy.weights.copy())
    # the hosts (cached across rounds) train at each round's rate: same first round, then not
    np.testing.assert_array_equal(weights["constant"][0], weights["cosine"][0])
    assert not np.allclose(weights["constant"][1], weights["cosine"][1])
    assert rates["constant"] == [0.8] * 4
    assert rates["cosine"] == pytest.approx([0.8 * lr_factor("cosine", r, 4) for r in range(4)])
    assert rates["cosine"][0] == 0.8 and rates["cosine"][-1] < 0.15


def test_hosts_give_the_initial_weights_and_evaluate_as_the_model_would_in_process(prepared):
    """The server holds no model code: its initial weights and held-out metrics come from phone hosts,
    and must equal the model's own seeded initialisation and a direct evaluation."""
    setup = build_setup(tiny_config(), prepared.root)
    grid = LocalGrid(n_nodes=3)
    weights = query_initial_weights(grid, setup.task.to_config(), timeout_s=60)
    np.testing.assert_array_equal(weights, initial_weights(setup.model_config, setup.config.simulate.seed))

    strategy = strategy_for(prepared)
    spec = EvalTask(users=3, max_positions=40, beam=4, max_word_pieces=3)
    messages = list(strategy.configure_evaluate(5, strategy.arrays(), ConfigRecord(spec.to_config()), grid))
    assert [(m.metadata.message_type, m.metadata.dst_node_id) for m in messages] == [("evaluate", 103)]  # 5 % 3
    metrics = strategy.aggregate_evaluate(5, grid.send_and_receive(messages))
    data = FederatedData.load(prepared.root)
    direct = evaluate_model(
        model_from_weights(setup.model_config, weights),
        data.tokenizer,
        data.lexicon,
        sample_messages(data.test_users, 3, setup.config.simulate.seed),
        max_positions=40,
        beam=4,
        max_word_pieces=3,
    )
    assert metrics is not None and dict(metrics) == pytest.approx(direct)


def test_a_failed_evaluation_stops_the_run_with_the_hosts_reason(prepared):
    def fail(reply: Message) -> Message:
        return Message(Error(code=0, reason="out of memory"), reply_to=reply) if reply.has_content() else reply

    strategy = strategy_for(prepared)
    grid = LocalGrid(n_nodes=2, tamper=fail)
    messages = list(
        strategy.configure_evaluate(1, strategy.arrays(), ConfigRecord(EvalTask(3, 40, 4, 3).to_config()), grid)
    )
    with pytest.raises(StrategyError, match=r"held-out evaluation failed on phone host \d+: out of memory"):
        strategy.aggregate_evaluate(1, grid.send_and_receive(messages))


def _server_steps(prepared, *settings: str) -> list[np.ndarray]:
    """The change of the global weights in each of 2 fedavg rounds."""
    strategy = strategy_for(prepared, "simulate.rounds=2", 'simulate.optimizer.name="fedavg"', *settings)
    grid = LocalGrid()
    trail = [strategy.weights.copy()]
    for rnd in (1, 2):
        run_round(strategy, grid, rnd)
        trail.append(strategy.weights.copy())
    return [trail[1] - trail[0], trail[2] - trail[1]]


def test_cosine_server_lr_schedule_scales_each_rounds_server_step(prepared):
    constant = _server_steps(prepared, 'simulate.optimizer.lr_schedule="constant"')
    cosine = _server_steps(prepared, 'simulate.optimizer.lr_schedule="cosine"')
    # same phones, same starting weights each round: the same mean delta, scaled by the round's factor
    np.testing.assert_array_equal(constant[0], cosine[0])
    assert np.abs(constant[1]).max() > 0
    np.testing.assert_allclose(cosine[1], lr_factor("cosine", 1, 2) * constant[1], rtol=1e-4, atol=1e-7)


def test_server_lr_warmup_scales_the_first_rounds_server_steps(prepared):
    plain = _server_steps(prepared)
    warm = _server_steps(prepared, "simulate.optimizer.warmup_rounds=4")
    # round 1 starts from the same weights: its step is a quarter of the plain one
    np.testing.assert_allclose(warm[0], 0.25 * plain[0], rtol=1e-4, atol=1e-7)
    assert np.abs(plain[0]).max() > 0
