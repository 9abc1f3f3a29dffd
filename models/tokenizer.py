"""SentencePiece tokenizer for keyboard text, and the text normalisation both it and the n-grams use.

Text is normalised the same way everywhere (training, evaluation, on the phone): NFKC, lower case,
words and punctuation marks separated by single spaces. A "word" (what the suggestion strip shows) is a
maximal run of letters/digits with inner apostrophes; punctuation marks are context but never a target.

Special ids are fixed so that the model, the ONNX bundle and the Kotlin client agree:
pad = 0, unk = 1, bos = 2, eos = 3.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
WORD_START = "\u2581"  # SentencePiece's marker for a piece that begins a new word

_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]", re.UNICODE)
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)


def normalize(text: str) -> str:
    """Canonical form of a message: NFKC, lower case, tokens separated by single spaces."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return " ".join(_TOKEN_RE.findall(text))


def words(normalized: str) -> list[str]:
    """Tokens of a normalised message (words and punctuation marks)."""
    return normalized.split()


def is_word(token: str) -> bool:
    """True for a suggestible word, False for a punctuation mark."""
    return _WORD_RE.fullmatch(token) is not None


class Tokenizer:
    """A loaded SentencePiece model plus the per-piece facts the word-level metrics need."""

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"tokenizer special ids are {ids}; fedkey needs pad/unk/bos/eos = 0/1/2/3")
        self.vocab_size = self.sp.get_piece_size()
        self.pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        special = {PAD_ID, UNK_ID, BOS_ID, EOS_ID}
        # A piece "starts a word" if it begins with the word marker; special pieces never do.
        self.word_start = [i not in special and p.startswith(WORD_START) for i, p in enumerate(self.pieces)]

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls(Path(path).read_bytes())

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self._proto)

    def serialized(self) -> bytes:
        return self._proto

    def encode(self, normalized_text: str) -> list[int]:
        return self.sp.encode(normalized_text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode(list(ids))

    def piece_text(self, piece_id: int) -> str:
        """Surface text of a piece without the word marker."""
        return self.pieces[piece_id].replace(WORD_START, "")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8192, model_type: str = "unigram", seed_sentence_size: int = 1_000_000
) -> Tokenizer:
    """Train SentencePiece on already normalised texts (one message each).

    `hard_vocab_limit=False` lets a small corpus yield fewer pieces than asked instead of failing.
    """
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t for t in texts if t),
        model_writer=out,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        character_coverage=1.0 if model_type == "char" else 0.9995,
        input_sentence_size=seed_sentence_size,
        shuffle_input_sentence=True,
        hard_vocab_limit=False,
        # Text is already normalised (lower case, NFKC); keep SentencePiece from changing it further.
        normalization_rule_name="identity",
        num_threads=2,
        minloglevel=2,
    )
    return Tokenizer(out.getvalue())
