"""Keyboard metrics: next-word recall@k as a suggestion strip shows it, and perplexity.

For every word position of a message (punctuation marks are context, never targets) a predictor
proposes its top-k complete next words from the lexicon, given the message so far. A hit is the true
word among them; a true word outside the lexicon is always a miss (a keyboard cannot suggest it).
Recall@k is hits / word positions. Any predictor (LSTM beam over pieces, n-gram over words) plugs
in through `WordPredictor`, so both are measured by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fedkey.models.tokenizer import is_word


class WordPredictor(Protocol):
    def suggest(self, messages: Sequence[list[str]], k: int) -> list[list[list[str]]]:
        """For each message (list of tokens) and each word position j in it, the top-k words
        predicted from tokens[:j]. Returns one list per message with one suggestion list per
        word position, in order."""
        ...


@dataclass
class RecallResult:
    positions: int
    hits: dict[int, int]
    oov: int

    def recall(self, k: int) -> float:
        return self.hits[k] / self.positions if self.positions else 0.0

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {f"recall@{k}": self.recall(k) for k in sorted(self.hits)}
        out["positions"] = self.positions
        out["oov_rate"] = self.oov / self.positions if self.positions else 0.0
        return out


def word_positions(tokens: list[str]) -> list[int]:
    return [j for j, t in enumerate(tokens) if is_word(t)]


def limit_positions(messages: Sequence[str], max_positions: int) -> list[list[str]]:
    """Messages as token lists, truncated to at most max_positions word positions in total (0 = all)."""
    out: list[list[str]] = []
    budget = max_positions or math.inf
    for message in messages:
        tokens = message.split()
        count = len(word_positions(tokens))
        if count == 0:
            continue
        if count > budget:
            keep = word_positions(tokens)[int(budget)] if budget > 0 else 0
            tokens = tokens[:keep]
        if tokens and word_positions(tokens):
            out.append(tokens)
            budget -= len(word_positions(tokens))
        if budget <= 0:
            break
    return out


def recall_at_k(
    predictor: WordPredictor,
    messages: Sequence[list[str]],
    lexicon: set[str],
    ks: Sequence[int] = (1, 3),
    batch: int = 256,
) -> RecallResult:
    """Recall@k over every word position of the messages (token lists)."""
    kmax = max(ks)
    hits = dict.fromkeys(ks, 0)
    positions = oov = 0
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]
        suggestions = predictor.suggest(chunk, kmax)
        for tokens, per_position in zip(chunk, suggestions, strict=True):
            targets = [tokens[j] for j in word_positions(tokens)]
            if len(per_position) != len(targets):
                raise ValueError("predictor returned a different number of positions than the message has words")
            for target, top in zip(targets, per_position, strict=True):
                positions += 1
                if target not in lexicon:
                    oov += 1
                    continue
                for k in ks:
                    if target in top[:k]:
                        hits[k] += 1
    return RecallResult(positions, hits, oov)
