"""Kneser-Ney n-grams: proper distributions, hand-computed values, and the expected ordering of models."""

from __future__ import annotations

import numpy as np
import pytest

from fedkey.models.metrics import recall_at_k
from fedkey.models.ngram import KneserNey

TRAIN = ["a b c", "a b d", "b c", "c a b"]
LEX = ["a", "b", "c", "d"]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_distributions_sum_to_one(order):
    model = KneserNey(TRAIN, LEX, order=order)
    for context in ([], ["a"], ["a", "b"], ["d", "d"], ["x"]):
        p = model.distribution(context)
        assert np.all(p > 0) and abs(p.sum() - 1) < 1e-12


def test_bigram_value_by_hand():
    model = KneserNey(TRAIN, LEX, order=2, discount=0.75)
    v = len(model.vocab)  # <unk>, </s>, a, b, c, d
    # continuation counts N1+(. w): a:{<s>,c} b:{a,<s>} c:{b,<s>} d:{b} </s>:{c,d,b}; total 10
    cont = {"a": 2, "b": 2, "c": 2, "d": 1, "</s>": 3}
    p_uni = {w: (max(n - 0.75, 0) / 10) + 0.75 * 5 / 10 / v for w, n in cont.items()}
    # after "b": followers c (2), d (1), </s> (1) -> c(b .) = 4, N1+(b .) = 3
    expected_c = (2 - 0.75) / 4 + 0.75 * 3 / 4 * p_uni["c"]
    assert model.distribution(["b"])[model.index["c"]] == pytest.approx(expected_c)


def test_trigram_beats_bigram_on_patterned_text():
    rng = np.random.default_rng(0)
    # the word after "x y" is always "z", after "w y" always "q": only a trigram can tell
    msgs = [("x y z" if rng.random() < 0.5 else "w y q") for _ in range(300)]
    lex = ["x", "y", "z", "w", "q"]
    tokens = [m.split() for m in msgs[:50]]
    bi = recall_at_k(KneserNey(msgs, lex, order=2), tokens, set(lex)).recall(1)
    tri = recall_at_k(KneserNey(msgs, lex, order=3), tokens, set(lex)).recall(1)
    assert tri > bi + 0.1  # the third word: always right for the trigram, a coin toss for the bigram


def test_suggestions_never_include_punctuation_or_unknown():
    model = KneserNey(["a , b .", "a , c ."], ["a", "b", "c"], order=2)
    top = model.suggest([["a", "b"]], 3)[0]
    assert all(w in {"a", "b", "c"} for suggestions in top for w in suggestions)
