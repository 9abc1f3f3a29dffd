"""Interpolated Kneser-Ney n-gram word model: the baseline a keyboard model must beat.

Gboard (Hard et al. 2018) compares the CIFG-LSTM against an n-gram model; this is the strong form
of that baseline (Chen & Goodman 1999, interpolated KN with one absolute discount per order).
Tokens are words and punctuation marks; the vocabulary is the lexicon plus every punctuation mark
seen, and anything else is <unk>. Orders 2 (bigram) and 3 (trigram) are the reported baselines.

    P_n(w | h) = max(c(h w) - D, 0) / c(h) + D * N1+(h .) / c(h) * P_{n-1}(w | h')

where the highest order uses counts c and lower orders use continuation counts (the number of
distinct words preceding h w); a history never seen falls through to the lower order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from fedkey.models.tokenizer import is_word

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class _Level:
    """Counts of one order: for each history, follower ids and their (continuation) counts."""

    def __init__(self, counts: dict[tuple[int, ...], Counter[int]], discount: float):
        self.discount = discount
        self.followers: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, float, float]] = {}
        for history, counter in counts.items():
            ids = np.fromiter(counter.keys(), dtype=np.int64, count=len(counter))
            values = np.fromiter(counter.values(), dtype=np.float64, count=len(counter))
            total = float(values.sum())
            # (ids, discounted probabilities, back-off weight, total)
            self.followers[history] = (
                ids,
                np.maximum(values - discount, 0) / total,
                discount * len(ids) / total,
                total,
            )


class KneserNey:
    """Interpolated Kneser-Ney model of a given order over word/punctuation tokens."""

    def __init__(self, messages: Iterable[str], lexicon: Sequence[str], order: int = 3, discount: float = 0.75):
        if order < 1:
            raise ValueError("n-gram order must be at least 1")
        self.order = order
        punct = set()
        corpus = [m.split() for m in messages]
        for tokens in corpus:
            punct.update(t for t in tokens if not is_word(t))
        self.vocab = [UNK, EOS, *lexicon, *sorted(punct - set(lexicon))]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        size = len(self.vocab)
        self.suggestible = np.array([is_word(w) and w != UNK for w in self.vocab])
        bos = -1  # <s> only ever appears in histories

        counts: list[dict[tuple[int, ...], Counter[int]]] = [defaultdict(Counter) for _ in range(order)]
        for tokens in corpus:
            ids = [bos] * (order - 1) + [self.index.get(t, 0) for t in tokens] + [1]
            for j in range(order - 1, len(ids)):
                for n in range(1, order + 1):
                    history = tuple(ids[j - n + 1 : j])
                    counts[n - 1][history][ids[j]] += 1
        # Lower orders use continuation counts: distinct left contexts of (history, w).
        cont: list[dict[tuple[int, ...], Counter[int]]] = [defaultdict(Counter) for _ in range(order)]
        for n in range(2, order + 1):
            for history, counter in counts[n - 1].items():
                for w in counter:
                    cont[n - 2][history[1:]][w] += 1
        levels = [*cont[: order - 1], counts[order - 1]]
        self.levels = [_Level(levels[n], discount) for n in range(order)]
        unigram = self.levels[0].followers[()]
        base = np.zeros(size)
        base[unigram[0]] = unigram[1]
        self.unigram = base + unigram[2] / size  # leftover mass spread uniformly

    def _history(self, tokens: Sequence[str]) -> tuple[int, ...]:
        ids = [-1] * (self.order - 1) + [self.index.get(t, 0) for t in tokens]
        return tuple(ids[len(ids) - (self.order - 1) :]) if self.order > 1 else ()

    def distribution(self, tokens: Sequence[str]) -> np.ndarray:
        """P(next token | tokens) over the vocabulary."""
        history = self._history(tokens)
        p = self.unigram.copy()
        for n in range(2, self.order + 1):
            entry = self.levels[n - 1].followers.get(history[len(history) - (n - 1) :])
            if entry is None:
                continue
            ids, probs, backoff, _ = entry
            p *= backoff
            p[ids] += probs
        return p

    def suggest(self, messages: Sequence[list[str]], k: int) -> list[list[list[str]]]:
        out = []
        for tokens in messages:
            per_position = []
            for j, token in enumerate(tokens):
                if not is_word(token):
                    continue
                p = np.where(self.suggestible, self.distribution(tokens[:j]), -1.0)
                top = np.argpartition(-p, k)[:k]
                per_position.append([self.vocab[i] for i in top[np.argsort(-p[top])]])
            out.append(per_position)
        return out

    def perplexity(self, messages: Iterable[str]) -> float:
        """Per-token perplexity, end of message included; out-of-vocabulary tokens scored as <unk>."""
        nll, count = 0.0, 0
        for message in messages:
            tokens = message.split()
            for j, token in enumerate([*tokens, EOS]):
                nll -= float(np.log(self.distribution(tokens[:j])[self.index.get(token, 0)]))
                count += 1
        return float(np.exp(nll / max(count, 1)))
