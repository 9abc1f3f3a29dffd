"""One call that measures a model the way the keyboard team reads it: recall@1/@3 and perplexity."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedkey.models.cifg_lstm import CifgLstm
from fedkey.models.metrics import limit_positions, recall_at_k
from fedkey.models.suggest import LstmSuggester, perplexity
from fedkey.models.tokenizer import Tokenizer


def evaluate_model(
    model: CifgLstm,
    tokenizer: Tokenizer,
    lexicon: Sequence[str],
    messages: Sequence[str],
    *,
    max_positions: int = 0,
    beam: int = 6,
    max_word_pieces: int = 4,
) -> dict[str, float]:
    """Recall@1/@3 over word positions (at most max_positions, 0 = all) and perplexity of the same text."""
    token_lists = limit_positions(messages, max_positions)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        suggester = LstmSuggester(model, tokenizer, lexicon, beam=beam, max_word_pieces=max_word_pieces)
        recall = recall_at_k(suggester, token_lists, set(lexicon)).as_dict()
        ppl = perplexity(model, tokenizer, [" ".join(t) for t in token_lists])
    model.train(was_training)
    return recall | ppl
