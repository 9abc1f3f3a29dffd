"""Preparing federated data: cleaning, caps, deterministic disjoint splits, stats, atomic output."""

from __future__ import annotations

import json

import pytest

from fedkey.device_sim.corpora import CorpusError, UserText
from fedkey.device_sim.federated_data import FederatedData, clean_users, prepare, split_users


def test_splits_are_disjoint_and_cover_users(prepared):
    train = {u.user for u in prepared.train_users}
    test = {u.user for u in prepared.test_users}
    assert train and test and not train & test
    assert len(train | test) == 60
    assert prepared.stats["train"]["users"] == len(train)


def test_personal_split_is_the_last_fifth(prepared, corpus_file):
    raw = {}
    for line in corpus_file.read_text().splitlines():
        r = json.loads(line)
        raw.setdefault(r["user"], []).append(r["text"])
    user = prepared.train_users[0]
    assert len(user.personal) == round(len(raw[user.user]) * 0.2)
    assert user.messages + user.personal == [" ".join(m.split()) for m in user.messages + user.personal]
    # the personal messages are the user's latest ones (ts order)
    from fedkey.models.tokenizer import normalize

    assert user.personal == [normalize(t) for t in raw[user.user][-len(user.personal) :]]


def test_split_is_deterministic_by_seed():
    users = [UserText(f"u{i}", ["a b", "c d", "e f"]) for i in range(400)]
    a = split_users(users, seed=1, test_fraction=0.1, personal_fraction=0.2)
    b = split_users(list(reversed(users)), seed=1, test_fraction=0.1, personal_fraction=0.2)
    c = split_users(users, seed=2, test_fraction=0.1, personal_fraction=0.2)
    held = lambda s: {u.user for u in s if u.split == "test"}  # noqa: E731
    assert held(a) == held(b)
    assert held(a) != held(c)
    assert 20 <= len(held(a)) <= 60  # ~10% of 400


def test_cleaning_caps_and_drops():
    users = [
        UserText("big", [f"message number {i}" for i in range(50)]),
        UserText("empty", ["", "  ", "!!!"]),
        UserText("long", ["w " * 100, "x"]),
    ]
    cleaned = {u.user: u.messages for u in clean_users(users, min_messages=2, max_messages=10, max_words=5)}
    assert len(cleaned["big"]) == 10 and cleaned["big"][0] == "message number 0"
    assert "empty" not in cleaned  # "!!!" normalises to three marks: one message only, below min_messages
    assert cleaned["long"][0] == "w w w w w"


def test_real_chitchat_prepares(tmp_path_factory):
    out = tmp_path_factory.mktemp("chitchat")
    data = prepare("chitchat", out, vocab_size=500, lexicon_size=2000)
    again = FederatedData.load(out)
    assert {u.user for u in again.test_users} == {u.user for u in data.test_users}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["train"]["users"] > 900 and 80 < stats["test"]["users"] < 160
    assert stats["train"]["messages_per_user"]["max"] <= 1000  # the per-user cap
    assert 0 < stats["test_oov_rate"] < 0.2
    assert data.tokenizer.vocab_size == 500


def test_prepare_refuses_tiny_or_broken_input(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"user": "a", "text": "hi there"}) + "\n")
    with pytest.raises(CorpusError, match="no user has 2 or more"):
        prepare(f"jsonl:{path}", tmp_path / "out")
    assert not (tmp_path / "out" / "prepare.json").exists()
    with pytest.raises(CorpusError, match="not a prepared data folder"):
        FederatedData.load(tmp_path)
