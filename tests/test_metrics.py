"""Keyboard metrics on hand-made cases, and the piece beam search against brute-force word probabilities."""

from __future__ import annotations

import math

import torch

from fedkey.models.cifg_lstm import CifgLstm, ModelConfig, cell_step, output_logits
from fedkey.models.metrics import limit_positions, recall_at_k, word_positions
from fedkey.models.suggest import LstmSuggester, perplexity
from fedkey.models.tokenizer import EOS_ID

MESSAGES = [m.split() for m in ["i like tea .", "you love cake !", "we , they need music"]]
LEXICON = {"i", "like", "tea", "you", "love", "cake", "we", "they", "need", "music"}


class Oracle:
    """Suggests the true next word at a chosen rank (and filler words elsewhere)."""

    def __init__(self, rank: int):
        self.rank = rank

    def suggest(self, messages, k):
        out = []
        for tokens in messages:
            per = []
            for j in word_positions(tokens):
                top = ["zzz1", "zzz2", "zzz3", "zzz4"][:k]
                top.insert(self.rank, tokens[j])
                per.append(top[:k])
            out.append(per)
        return out


def test_oracle_scores_one():
    result = recall_at_k(Oracle(0), MESSAGES, LEXICON)
    assert result.recall(1) == 1.0 and result.recall(3) == 1.0
    assert result.positions == 10  # punctuation marks are not targets


def test_rank_two_counts_for_recall3_only():
    result = recall_at_k(Oracle(1), MESSAGES, LEXICON)
    assert result.recall(1) == 0.0 and result.recall(3) == 1.0
    assert recall_at_k(Oracle(3), MESSAGES, LEXICON).recall(3) == 0.0


def test_oov_target_is_a_miss_even_when_suggested():
    result = recall_at_k(Oracle(0), MESSAGES, LEXICON - {"music"})
    assert result.recall(1) == 9 / 10 and result.oov == 1


def test_limit_positions_truncates_to_budget():
    msgs = ["a b c", "d e", "f"]
    limited = limit_positions(msgs, 4)
    assert sum(len(word_positions(t)) for t in limited) == 4
    assert limited == [["a", "b", "c"], ["d"]]


def _brute_force_word_probs(model, tokenizer, context_ids, lexicon):
    """P(word | context) for every lexicon word, by scoring its pieces and a following boundary."""
    p = model.param_dict()
    probs = {}
    boundary = [i for i, s in enumerate(tokenizer.word_start) if s] + [EOS_ID]
    for word in lexicon:
        ids = tokenizer.encode(word)
        state = model.init_state(1)
        logp = 0.0
        seq = [2, *context_ids, *ids]
        for t, tok in enumerate(seq):
            state = cell_step(p, p["embedding"][torch.tensor([tok])], state)
            dist = torch.log_softmax(output_logits(p, state[0]), -1)[0]
            if t >= len(context_ids) and t < len(seq) - 1:
                logp += float(dist[seq[t + 1]])
        logp += float(torch.logsumexp(dist[boundary], 0))
        probs[word] = math.exp(logp)
    return probs


def test_beam_search_matches_brute_force(prepared):
    tok = prepared.tokenizer
    torch.manual_seed(0)
    model = CifgLstm(ModelConfig(vocab_size=tok.vocab_size, embed_dim=8, hidden_dim=8), seed=5)
    with torch.no_grad():
        model.params["embedding"].mul_(8.0)  # a peaked distribution, as a trained model has
    lexicon = prepared.lexicon
    suggester = LstmSuggester(model, tok, lexicon, beam=tok.vocab_size, max_word_pieces=6)
    context = ["we", "like"]
    top = suggester.suggest([[*context, lexicon[0]]], 3)[0][-1]
    with torch.no_grad():
        probs = _brute_force_word_probs(model, tok, tok.encode(" ".join(context)), lexicon)
    expected = sorted(probs, key=probs.get, reverse=True)[:3]
    assert top == expected


def test_perplexity_of_uniform_model_is_vocab_size(prepared):
    tok = prepared.tokenizer
    model = CifgLstm(ModelConfig(vocab_size=tok.vocab_size, embed_dim=4, hidden_dim=4), seed=0)
    with torch.no_grad():
        for t in model.params.values():
            t.zero_()
    result = perplexity(model, tok, ["we like tea", "i need cake"])
    assert abs(result["perplexity"] - tok.vocab_size) < 1e-3
