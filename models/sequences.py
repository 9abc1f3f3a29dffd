"""Messages -> fixed-length training sequences, as every trainer (server, simulated phone, ONNX) uses them.

Each message is [BOS] pieces [EOS]; the inputs are all but the last id, the targets all but the first.
A message longer than `seq_len` is cut into consecutive windows (each target is counted exactly
once); shorter ones are padded with PAD and masked. The keyboard context resets at every message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkey.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@dataclass
class SequenceBatch:
    inputs: np.ndarray  # [N, T] int64
    targets: np.ndarray  # [N, T] int64
    mask: np.ndarray  # [N, T] float32, 1 where the target counts
    lengths: np.ndarray  # [N] number of counted targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def take(self, index: np.ndarray | slice) -> SequenceBatch:
        return SequenceBatch(self.inputs[index], self.targets[index], self.mask[index], self.lengths[index])


def window_count(encoded: Sequence[Sequence[int]], seq_len: int) -> int:
    """How many windows :func:`encode_sequences` cuts these messages into (without building them)."""
    return sum(math.ceil((len(ids) + 1) / seq_len) for ids in encoded)  # BOS, pieces, EOS: len + 1 targets


def encode_sequences(encoded: Sequence[Sequence[int]], seq_len: int) -> SequenceBatch:
    """Piece-id lists (one per message) -> windows of exactly seq_len positions."""
    windows: list[list[int]] = []
    for ids in encoded:
        full = [BOS_ID, *ids, EOS_ID]
        # window i covers inputs full[s : s+seq_len] and targets full[s+1 : s+1+seq_len]
        for start in range(0, len(full) - 1, seq_len):
            windows.append(full[start : start + seq_len + 1])
    n = len(windows)
    inputs = np.full((n, seq_len), PAD_ID, dtype=np.int64)
    targets = np.full((n, seq_len), PAD_ID, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for row, window in enumerate(windows):
        count = len(window) - 1
        inputs[row, :count] = window[:-1]
        targets[row, :count] = window[1:]
        lengths[row] = count
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.float32)
    return SequenceBatch(inputs, targets, mask, lengths)


def message_sequences(tokenizer: Tokenizer, messages: Sequence[str], seq_len: int) -> SequenceBatch:
    return encode_sequences(tokenizer.encode_batch(list(messages)), seq_len)


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of row indices where rows of similar length travel together (less padding)."""
    order = rng.permutation(len(lengths))
    # sort within large random pools so batches are homogeneous in length yet differ between epochs
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches
