"""Shared fixtures: a small bring-your-own corpus and a prepared folder built from it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def synthetic_messages(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        subject = rng.choice(["i", "you", "we", "they"])
        verb = rng.choice(["like", "love", "want", "need"])
        obj = rng.choice(["coffee", "tea", "cake", "music", "movies"])
        tail = rng.choice(["today", "tomorrow", "really", "so much", ""])
        out.append(f"{subject.capitalize()} {verb} {obj} {tail}".strip() + rng.choice([".", "!", "", "?"]))
    return out


def write_jsonl_corpus(path: Path, n_users: int = 60, per_user: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for u in range(n_users):
            for i, text in enumerate(synthetic_messages(rng, per_user)):
                handle.write(json.dumps({"user": f"user{u:03d}", "text": text, "ts": i}) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path):
    from fedkey.device_sim.federated_data import prepare

    return prepare(f"jsonl:{corpus_file}", tmp_path_factory.mktemp("prepared"), vocab_size=64, lexicon_size=50)
