"""Glue: prepare federated data with the `[data]` and `[tokenizer]` settings of a configuration."""

from __future__ import annotations

from pathlib import Path

from fedkey.config import FedkeyConfig
from fedkey.device_sim.federated_data import FederatedData, prepare


def prepare_from_config(config: FedkeyConfig, out: Path, corpus: str | None = None) -> FederatedData:
    """`prepare` with every setting taken from the config (corpus: `data.corpus` unless given)."""
    d, t = config.data, config.tokenizer
    return prepare(
        corpus or d.corpus,
        out,
        test_fraction=d.test_fraction,
        personal_fraction=d.personal_fraction,
        min_messages=d.min_messages,
        max_messages_per_user=d.max_messages_per_user,
        max_words_per_message=d.max_words_per_message,
        lexicon_size=d.lexicon_size,
        seed=d.seed,
        vocab_size=t.vocab_size,
        model_type=t.model_type,
        tokenizer_source=t.source,
    )
