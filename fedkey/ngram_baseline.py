"""The Kneser-Ney n-gram baseline on prepared federated data: fit on training users, measure like the LSTM."""

from __future__ import annotations

from collections.abc import Sequence

from fedkey.device_sim.federated_data import FederatedData
from fedkey.models.metrics import limit_positions, recall_at_k
from fedkey.models.ngram import KneserNey

SPLITS = ("held_out_users", "personal")


def ngram_metrics(
    data: FederatedData, order: int, max_positions: int, splits: Sequence[str] = SPLITS
) -> dict[str, dict[str, float]]:
    """Recall@k and word perplexity of an order-`order` Kneser-Ney model trained on the training users'
    text, on held-out users' messages and/or the training users' personal split (`max_positions` caps
    the word positions of each, 0 = all)."""
    model = KneserNey((m for u in data.train_users for m in u.messages), data.lexicon, order=order)
    texts = {
        "held_out_users": lambda: [m for u in data.test_users for m in u.messages],
        "personal": lambda: [m for u in data.train_users for m in u.personal],
    }
    out = {}
    for name in splits:
        tokens = limit_positions(texts[name](), max_positions)
        out[name] = recall_at_k(model, tokens, set(data.lexicon)).as_dict()
        out[name]["word_perplexity"] = model.perplexity(" ".join(t) for t in tokens)
    return out
