"""Corpus loaders on the real registry packages, and the bring-your-own JSONL format's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedkey.device_sim.corpora import CorpusError, load_corpus, load_jsonl


@pytest.fixture(scope="module")
def chitchat():
    return load_corpus("chitchat")


def test_chitchat_users_are_senders(chitchat):
    users = {u.user for u in chitchat}
    assert len(users) == len(chitchat) > 1000  # one record per sender UUID
    assert all(len(u.user) == 36 and u.user.count("-") == 4 for u in chitchat)
    assert sum(len(u.messages) for u in chitchat) > 200_000


def test_chitchat_drops_one_word_unanswered_openers(chitchat):
    counts = {}
    for u in chitchat:
        for m in u.messages:
            counts[m] = counts.get(m, 0) + 1
    from chitchat_dataset import __file__ as pkg

    raw = json.loads((Path(pkg).parent / "dataset.json").read_text())
    openers = [
        t[0]["text"]
        for c in raw.values()
        if len(c["messages"]) == 1
        for t in [c["messages"][0]]
        if len(t) == 1 and len(t[0]["text"].split()) <= 1
    ]
    assert openers, "the corpus has one-word unanswered openers"
    total_raw = sum(len(t) for c in raw.values() for t in c["messages"])
    kept = sum(len(u.messages) for u in chitchat)
    assert total_raw - kept >= len(openers)


def test_shakespeare_users_are_play_roles():
    users = load_corpus("shakespeare")
    names = [u.user for u in users]
    assert len(names) == len(set(names)) > 1000
    assert "hamlet/HAMLET" in names
    hamlet = next(u for u in users if u.user == "hamlet/HAMLET")
    assert any("to be, or not to be" in m.lower() for m in hamlet.messages)
    # stage directions (_Exit_, _Enter ..._) never reach a user's text
    assert not any(m.startswith("_") and m.endswith("_") for u in users for m in u.messages)


def _write(tmp_path: Path, lines: list[str | bytes]) -> Path:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def test_jsonl_orders_by_ts_and_groups_users(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"user": "a", "text": "second", "ts": 2}),
            json.dumps({"user": "b", "text": "hello"}),
            json.dumps({"user": "a", "text": "first", "ts": 1}),
        ],
    )
    users = {u.user: u.messages for u in load_jsonl(path)}
    assert users == {"a": ["first", "second"], "b": ["hello"]}


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([json.dumps({"text": "no user"})], "c.jsonl:1: missing field 'user'"),
        ([json.dumps({"user": "a", "text": "ok"}), json.dumps({"user": "a"})], "c.jsonl:2: missing field 'text'"),
        ([b'{"user": "a", "text": "caf\xe9"}'], "c.jsonl:1: not UTF-8"),
        (["user,text", "a,hello"], "c.jsonl:1: not a JSON object"),
        (["[1, 2]"], "c.jsonl:1: expected a JSON object"),
        ([json.dumps({"user": "a", "text": 5})], "field 'text' must be a string"),
        ([json.dumps({"user": " ", "text": "x"})], "c.jsonl:1: empty user id"),
        ([json.dumps({"user": "a", "text": " "}), json.dumps({"user": "a", "text": ""})], "only empty messages"),
        (
            [json.dumps({"user": "a", "text": "x", "ts": 1}), json.dumps({"user": "a", "text": "y", "ts": "z"})],
            "mixes numeric and string",
        ),
        ([""], "no messages"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, lines, needle):
    path = _write(tmp_path, lines)
    with pytest.raises(CorpusError, match=None) as info:
        list(load_jsonl(path))
    assert needle in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_unknown_corpus_and_missing_file(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus("wikipedia")
    with pytest.raises(CorpusError, match="file not found"):
        load_corpus(f"jsonl:{tmp_path / 'nope.jsonl'}")
