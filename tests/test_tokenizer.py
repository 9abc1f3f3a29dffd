"""Normalisation and SentencePiece: round trips, fixed special ids, word boundaries."""

from __future__ import annotations

import pytest

from fedkey.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, is_word, normalize


def test_normalize_separates_punctuation_and_lowers():
    assert normalize("Hello,  World!! It’s 5pm") == "hello , world ! ! it's 5pm"
    assert normalize("   ") == ""
    assert is_word("it's") and is_word("5pm") and not is_word(",")


def test_round_trip_and_special_ids(prepared):
    tok = prepared.tokenizer
    text = normalize("I love coffee, really!")
    ids = tok.encode(text)
    assert tok.decode(ids) == text.replace(",", " \u2047 ")  # "," never occurs in this corpus: <unk>
    known = normalize("We need tea tomorrow!")
    assert tok.decode(tok.encode(known)) == known
    assert (tok.sp.pad_id(), tok.sp.unk_id(), tok.sp.bos_id(), tok.sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    # every word starts with exactly one word-start piece
    assert sum(tok.word_start[i] for i in ids) == len(text.split())


def test_serialized_model_reloads(prepared, tmp_path):
    tok = prepared.tokenizer
    tok.save(tmp_path / "t.model")
    again = Tokenizer.load(tmp_path / "t.model")
    assert again.encode("we like tea") == tok.encode("we like tea")


def test_foreign_special_ids_are_refused():
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a b c d e f g"] * 50), model_writer=out, vocab_size=12, minloglevel=2
    )
    with pytest.raises(ValueError, match="pad/unk/bos/eos"):
        Tokenizer(out.getvalue())


def test_public_source_tokenizer(tmp_path, corpus_file):
    from fedkey.device_sim.federated_data import prepare

    data = prepare(f"jsonl:{corpus_file}", tmp_path, vocab_size=300, lexicon_size=50, tokenizer_source="shakespeare")
    assert "\u2581thou" in data.tokenizer.pieces  # learnt from Shakespeare, not from the users
