"""Whole-word suggestions and perplexity from the piece-level CIFG-LSTM.

The network predicts SentencePiece pieces; a keyboard shows words. A word's probability is the
probability of its pieces followed by a word boundary (a word-starting piece or end of message):

    P(word | context) = prod_i P(piece_i | context, piece_<i) * P(boundary | context, word)

A beam search over pieces (width `beam`, at most `max_word_pieces` pieces) collects the most likely
complete words for many positions at once (one batched LSTM step per beam depth); words that a
different segmentation reaches twice have their probabilities added. Only lexicon words are shown.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fedkey.models.cifg_lstm import CifgLstm, cell_step, output_logits
from fedkey.models.metrics import word_positions
from fedkey.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

#: Word positions searched together: each holds ``beam`` hypotheses x vocabulary log-probabilities
#: (256 x 6 x 8192 floats = 50 MB per tensor for the default model, a few such live at once).
BEAM_CHUNK = 256


def _encode_messages(tokenizer: Tokenizer, messages: Sequence[list[str]]) -> list[list[int]]:
    return tokenizer.encode_batch([" ".join(m) for m in messages])


def _padded(batch: list[list[int]]) -> tuple[Tensor, Tensor]:
    """[BOS] + ids as inputs and ids + [EOS] as targets, padded to the longest: (inputs, targets)."""
    length = max(len(ids) for ids in batch) + 1
    inputs = torch.full((len(batch), length), PAD_ID, dtype=torch.long)
    targets = torch.full((len(batch), length), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(batch):
        inputs[row, : len(ids) + 1] = torch.tensor([BOS_ID, *ids])
        targets[row, : len(ids) + 1] = torch.tensor([*ids, EOS_ID])
    return inputs, targets


class LstmSuggester:
    """`WordPredictor` for a CIFG-LSTM over pieces."""

    def __init__(
        self, model: CifgLstm, tokenizer: Tokenizer, lexicon: Sequence[str], beam: int = 6, max_word_pieces: int = 4
    ):
        self.model = model
        self.device = model.params["w_x"].device
        self.tokenizer = tokenizer
        self.lexicon = set(lexicon)
        self.beam = beam
        self.max_word_pieces = max_word_pieces
        starts = torch.tensor(tokenizer.word_start)
        self.start_ids = torch.nonzero(starts).squeeze(1).to(self.device)
        special = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
        special[[PAD_ID, BOS_ID, EOS_ID]] = True
        self.cont_ids = torch.nonzero(~starts & ~special).squeeze(1).to(self.device)
        self.boundary_ids = torch.cat([self.start_ids, torch.tensor([EOS_ID], device=self.device)])
        self.piece_text = [tokenizer.piece_text(i) for i in range(tokenizer.vocab_size)]

    @torch.no_grad()
    def _states_at(self, messages: Sequence[list[str]]) -> tuple[Tensor, Tensor, list[int]]:
        """LSTM state before the first piece of every word position; and each message's position count."""
        params = self.model.param_dict()
        encoded = _encode_messages(self.tokenizer, messages)
        inputs = _padded(encoded)[0].to(self.device)
        state = self.model.init_state(len(encoded))
        hs, cs = [], []
        for x in torch.unbind(params["embedding"][inputs], dim=1):
            state = cell_step(params, x, state)
            hs.append(state[0])
            cs.append(state[1])
        h_all, c_all = torch.stack(hs, 1), torch.stack(cs, 1)
        rows, cols, counts = [], [], []
        for row, (tokens, ids) in enumerate(zip(messages, encoded, strict=True)):
            starts = [i for i, p in enumerate(ids) if self.tokenizer.word_start[p]]
            wanted = word_positions(tokens)
            if len(starts) != len(tokens):
                raise ValueError(f"pieces do not align with words in message {' '.join(tokens)!r}")
            counts.append(len(wanted))
            rows.extend([row] * len(wanted))
            cols.extend(starts[j] for j in wanted)  # state after BOS + pieces before word j
        index_r = torch.tensor(rows, dtype=torch.long, device=self.device)
        index_c = torch.tensor(cols, dtype=torch.long, device=self.device)
        return h_all[index_r, index_c], c_all[index_r, index_c], counts

    @torch.no_grad()
    def _beam_words(self, h: Tensor, c: Tensor, k: int) -> list[list[str]]:
        """Top-k lexicon words for each state. After the first piece, a hypothesis whose probability
        is already below the k-th best complete word of its position is dropped: more pieces can
        only lower it, so the pruning never changes the top k."""
        params = self.model.param_dict()
        n, beam = h.shape[0], min(self.beam, self.start_ids.numel())
        logp = torch.log_softmax(output_logits(params, h), dim=-1)
        scores, idx = logp[:, self.start_ids].topk(beam, dim=-1)
        owner = torch.arange(n, device=self.device).repeat_interleave(beam)  # position of each live hypothesis
        scores = scores.reshape(-1)
        pieces = self.start_ids[idx].reshape(-1, 1)
        state = cell_step(
            params, params["embedding"][pieces[:, 0]], (h.repeat_interleave(beam, 0), c.repeat_interleave(beam, 0))
        )
        found: list[dict[str, float]] = [{} for _ in range(n)]
        for depth in range(1, self.max_word_pieces + 1):
            logp = torch.log_softmax(output_logits(params, state[0]), dim=-1)
            done = scores + torch.logsumexp(logp[:, self.boundary_ids], dim=-1)
            self._collect(found, owner, pieces, done)
            if depth == self.max_word_pieces:
                break
            kth = torch.tensor([sorted(w.values())[-k] if len(w) >= k else 0.0 for w in found], device=self.device)
            ext, ext_ids = logp[:, self.cont_ids].topk(min(beam, self.cont_ids.numel()), dim=-1)
            ext = scores.unsqueeze(1) + ext
            alive = ext > torch.log(kth[owner]).unsqueeze(1)
            parent, which = torch.nonzero(alive, as_tuple=True)
            if parent.numel() == 0:
                break
            owner, scores = owner[parent], ext[parent, which]
            new_piece = self.cont_ids[ext_ids[parent, which]]
            pieces = torch.cat([pieces[parent], new_piece.unsqueeze(1)], dim=1)
            state = cell_step(params, params["embedding"][new_piece], (state[0][parent], state[1][parent]))
        return [[w for w, _ in sorted(words.items(), key=lambda kv: -kv[1])[:k]] for words in found]

    def _collect(self, found: list[dict[str, float]], owner: Tensor, pieces: Tensor, done: Tensor) -> None:
        texts = self.piece_text
        for i, seq, p in zip(owner.tolist(), pieces.tolist(), done.exp().tolist(), strict=True):
            word = "".join(texts[t] for t in seq)
            if word in self.lexicon:
                words = found[i]
                words[word] = words.get(word, 0.0) + p

    def suggest(self, messages: Sequence[list[str]], k: int) -> list[list[list[str]]]:
        h, c, counts = self._states_at(messages)
        flat: list[list[str]] = []
        for start in range(0, h.shape[0], BEAM_CHUNK):
            flat.extend(self._beam_words(h[start : start + BEAM_CHUNK], c[start : start + BEAM_CHUNK], k))
        out, cursor = [], 0
        for count in counts:
            out.append(flat[cursor : cursor + count])
            cursor += count
        return out


@torch.no_grad()
def perplexity(model: CifgLstm, tokenizer: Tokenizer, messages: Sequence[str], batch: int = 256) -> dict[str, float]:
    """Per-piece and per-word perplexity (end of message counted as a token in both) and mean loss."""
    nll = 0.0
    n_pieces = n_words = 0
    for start in range(0, len(messages), batch):
        chunk = [m for m in messages[start : start + batch] if m]
        if not chunk:
            continue
        device = model.params["w_x"].device
        inputs, targets = (t.to(device) for t in _padded(tokenizer.encode_batch(chunk)))
        mask = (targets != PAD_ID).float()
        loss, count = model.loss(inputs, targets, mask)
        nll += float(loss)
        n_pieces += int(count)
        n_words += sum(len(m.split()) + 1 for m in chunk)
    return {
        "loss": nll / max(n_pieces, 1),
        "perplexity": float(np.exp(nll / max(n_pieces, 1))),
        "word_perplexity": float(np.exp(nll / max(n_words, 1))),
    }
