"""Shared, cached fixtures for the ONNX export tests: a tiny trained-tokenizer checkpoint and its bundle.

Exporting traces the training graphs (seconds), so each is built once per test process and reused by
every tests/test_export_*, test_bundle_* and test_onnx_* module.
"""

from __future__ import annotations

import atexit
import functools
import random
import shutil
import tempfile
from pathlib import Path

import torch

from fedkey.models.bundle import export_bundle
from fedkey.models.checkpoint import Checkpoint
from fedkey.models.cifg_lstm import CifgLstm, ModelConfig
from fedkey.models.tokenizer import Tokenizer, train_tokenizer

SEQ_LEN = 8
_VOCABULARY = """i am you are we will see the a cat dog house going home now later today tomorrow
love like want need to go eat sleep play run good bad very really so what how why"""
WORDS = _VOCABULARY.split()


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@functools.cache
def tokenizer() -> Tokenizer:
    return train_tokenizer(sentences(400, seed=0), vocab_size=96)


@functools.cache
def checkpoint() -> Checkpoint:
    tok = tokenizer()
    config = ModelConfig(vocab_size=tok.vocab_size, embed_dim=16, hidden_dim=24)
    model = CifgLstm(config, seed=0)
    with torch.no_grad():  # non-zero biases so that parity tests exercise them
        model.params["out_bias"].normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
    return Checkpoint(model, tok, seq_len=SEQ_LEN, model_version=7, meta={"test": True})


@functools.cache
def bundle_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="fedkey-bundle-test-"))
    atexit.register(shutil.rmtree, root, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tracing is single-threaded work; don't contend with parallel test runs
    try:
        export_bundle(checkpoint(), root / "bundle")
    finally:
        torch.set_num_threads(threads)
    return root / "bundle"
