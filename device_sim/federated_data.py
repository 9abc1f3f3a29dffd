"""Corpus -> federated data: normalise, cap, split users, train the tokenizer, write a prepared folder.

A prepared folder holds:
    users.jsonl      one line per user: {"user", "split": "train"|"test", "messages": [...], "personal": [...]}
                     (messages normalised; `personal` = a training user's last messages, kept out of
                     training for personal evaluation; test users have all their messages in `messages`)
    lexicon.txt      the suggestible words, most frequent first (training users only)
    tokenizer.model  SentencePiece model
    stats.json       users, messages, words, per-user quantiles, OOV rate of held-out users
    prepare.json     the data/tokenizer settings that produced the folder

The split is deterministic: a user is held out when a keyed hash of (seed, user id) falls below the
test fraction, so adding users to a corpus never moves existing users between splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedkey.device_sim.corpora import CorpusError, UserText, load_corpus
from fedkey.models.tokenizer import Tokenizer, is_word, normalize, train_tokenizer

FORMAT = "fedkey-data/1"


@dataclass
class UserData:
    user: str
    split: str
    messages: list[str]
    personal: list[str] = field(default_factory=list)


@dataclass
class FederatedData:
    """Prepared per-user data, loaded from a prepared folder."""

    root: Path
    users: list[UserData]
    lexicon: list[str]
    tokenizer: Tokenizer
    stats: dict

    @property
    def train_users(self) -> list[UserData]:
        return [u for u in self.users if u.split == "train"]

    @property
    def test_users(self) -> list[UserData]:
        return [u for u in self.users if u.split == "test"]

    @classmethod
    def load(cls, root: str | Path) -> FederatedData:
        root = Path(root)
        meta_path = root / "prepare.json"
        if not meta_path.is_file():
            raise CorpusError(f"{root} is not a prepared data folder (no prepare.json); run `fedkey data prepare`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise CorpusError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        users = []
        with (root / "users.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                users.append(UserData(record["user"], record["split"], record["messages"], record["personal"]))
        lexicon = (root / "lexicon.txt").read_text(encoding="utf-8").split("\n")
        return cls(
            root,
            users,
            [w for w in lexicon if w],
            Tokenizer.load(root / "tokenizer.model"),
            json.loads((root / "stats.json").read_text()),
        )


def sample_messages(users: list[UserData], n_users: int, seed: int) -> list[str]:
    """All messages of `n_users` users drawn at random (seeded), in user order: an evaluation sample."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(users), size=min(n_users, len(users)), replace=False)
    return [m for i in sorted(chosen) for m in users[i].messages]


def is_test_user(user: str, seed: int, test_fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < test_fraction


def clean_users(raw: Iterable[UserText], min_messages: int, max_messages: int, max_words: int) -> list[UserText]:
    """Normalise messages, drop empty ones, truncate long ones, cap per user, drop users with too few."""
    out = []
    for user in raw:
        messages = []
        for text in user.messages:
            tokens = normalize(text).split()
            if tokens:
                messages.append(" ".join(tokens[:max_words]))
            if len(messages) == max_messages:
                break
        if len(messages) >= min_messages:
            out.append(UserText(user.user, messages))
    return out


def split_users(users: list[UserText], seed: int, test_fraction: float, personal_fraction: float) -> list[UserData]:
    out = []
    for user in sorted(users, key=lambda u: u.user):
        if is_test_user(user.user, seed, test_fraction):
            out.append(UserData(user.user, "test", user.messages))
        else:
            n_personal = round(len(user.messages) * personal_fraction)
            cut = len(user.messages) - n_personal
            out.append(UserData(user.user, "train", user.messages[:cut], user.messages[cut:]))
    return out


def build_lexicon(users: Iterable[UserData], size: int) -> list[str]:
    counts: Counter[str] = Counter()
    for user in users:
        for message in user.messages:
            counts.update(t for t in message.split() if is_word(t))
    return [w for w, _ in counts.most_common(size)]


def _quantiles(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {}
    return {f"p{q}": float(np.percentile(arr, q)) for q in (10, 50, 90, 99)} | {"max": float(arr.max())}


def compute_stats(users: list[UserData], lexicon: list[str]) -> dict:
    lex = set(lexicon)
    stats: dict = {}
    for split in ("train", "test"):
        group = [u for u in users if u.split == split]
        msgs = [len(u.messages) + len(u.personal) for u in group]
        word_counts = [sum(len(m.split()) for m in u.messages + u.personal) for u in group]
        stats[split] = {
            "users": len(group),
            "messages": int(sum(msgs)),
            "words": int(sum(word_counts)),
            "messages_per_user": _quantiles(msgs),
            "words_per_user": _quantiles(word_counts),
        }
    test_words = [t for u in users if u.split == "test" for m in u.messages for t in m.split() if is_word(t)]
    stats["lexicon_size"] = len(lexicon)
    stats["test_oov_rate"] = float(np.mean([w not in lex for w in test_words])) if test_words else 0.0
    return stats


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prepare(
    corpus: str,
    out: str | Path,
    *,
    test_fraction: float = 0.1,
    personal_fraction: float = 0.2,
    min_messages: int = 2,
    max_messages_per_user: int = 1000,
    max_words_per_message: int = 64,
    lexicon_size: int = 10_000,
    seed: int = 0,
    vocab_size: int = 8192,
    model_type: str = "unigram",
    tokenizer_source: str = "train",
) -> FederatedData:
    """Build a prepared folder from a corpus. Writes prepare.json last, so a crash leaves no valid folder."""
    out = Path(out)
    users = clean_users(load_corpus(corpus), min_messages, max_messages_per_user, max_words_per_message)
    if not users:
        raise CorpusError(f"corpus {corpus!r}: no user has {min_messages} or more non-empty messages")
    data_users = split_users(users, seed, test_fraction, personal_fraction)
    train = [u for u in data_users if u.split == "train"]
    if not train or len(train) == len(data_users):
        raise CorpusError(f"corpus {corpus!r}: {len(data_users)} users cannot be split into train and test users")
    if tokenizer_source == "train":
        tok_text: Iterable[str] = (m for u in train for m in u.messages)
    else:  # a public corpus: no user's text shapes the vocabulary
        tok_text = (
            m for u in clean_users(load_corpus(tokenizer_source), 1, 10**9, max_words_per_message) for m in u.messages
        )
    tokenizer = train_tokenizer(tok_text, vocab_size=vocab_size, model_type=model_type)
    lexicon = build_lexicon(train, lexicon_size)
    stats = compute_stats(data_users, lexicon) | {"corpus": corpus, "vocab_size": tokenizer.vocab_size}

    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare.json").unlink(missing_ok=True)
    _write_atomic(
        out / "users.jsonl",
        "".join(
            json.dumps(
                {"user": u.user, "split": u.split, "messages": u.messages, "personal": u.personal}, ensure_ascii=False
            )
            + "\n"
            for u in data_users
        ),
    )
    _write_atomic(out / "lexicon.txt", "\n".join(lexicon) + "\n")
    tokenizer.save(out / "tokenizer.model")
    _write_atomic(out / "stats.json", json.dumps(stats, indent=2))
    settings = {
        "format": FORMAT,
        "corpus": corpus,
        "test_fraction": test_fraction,
        "personal_fraction": personal_fraction,
        "min_messages": min_messages,
        "max_messages_per_user": max_messages_per_user,
        "max_words_per_message": max_words_per_message,
        "lexicon_size": lexicon_size,
        "seed": seed,
        "vocab_size": vocab_size,
        "model_type": model_type,
        "tokenizer_source": tokenizer_source,
    }
    _write_atomic(out / "prepare.json", json.dumps(settings, indent=2))
    return FederatedData.load(out)
