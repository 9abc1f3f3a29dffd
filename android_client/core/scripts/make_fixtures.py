"""Export a tiny fedkey bundle plus Python's outputs on it, for the Kotlin parity tests.

    .venv/bin/python android_client/core/scripts/make_fixtures.py [--out android_client/core/target/fixtures]

Writes OUT/bundle/ (a real bundle made by `fedkey.models.bundle.export_bundle` from a small random model and
a SentencePiece tokenizer trained on synthetic sentences; no corpus text) and OUT/expected.json with what the
Kotlin tests compare against: normalisation and piece ids of test sentences, predict logits and state (fp32
and int8 graphs, each with its manifest session config), the bundle's lexicon and whole-word suggestions of the
Python beam search, training rows, a local update's delta, losses and norm, and the wire-format encoding of
that delta.

Regeneration is skipped when OUT/expected.json was made from the same sources (this script and the Python
modules it calls), so `make test-kotlin` stays quick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SOURCES = [
    Path(__file__).resolve(),
    *sorted((ROOT / "models").glob("*.py")),
    *sorted((ROOT / "protocol").glob("*.py")),
]

SEQ_LEN = 8
_VOCABULARY = """i am you are we will see the a cat dog house going home now later today tomorrow love like want
need to go eat sleep play run good bad very really so what how why don't it's café naïve 2 10 100 o'clock
meet at by noon lunch dinner"""
WORDS = _VOCABULARY.split()
PUNCT = [".", ",", "!", "?", ":)", "-", "…"]

# Sentences whose normalisation and ids Kotlin must reproduce (synthetic or public-domain phrases).
TOKENIZER_CASES = [
    "Hey, I’m   HOME!",
    "I am going home now",
    "see you tomorrow",
    "What are you doing today?",
    "Don't go... it's LATE!!",
    "Café at noon, naïve cat",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ﬁ ligature",
    "meet at 10 o'clock, or 100?",
    "e\u0301te\u0301 a\u0308 combining marks",
    "snake_case and under_score",
    "emoji 😀👍 and ★ stars",
    "Straße ΟΔΟΣ İstanbul",
    "tabs\tand\nnewlines\r\nhere",
    "quotes \"x\" 'y' ‘z’ and a-b",
    "unknown 漢字 ßσς letters",
    "x ' y '' z'w a'",
    "",
    "   ",
    "1,000.50$ #hash @at 50%",
    "zzzz qqqq xylophone",
    "a \u2581",
    "\u2581",
    "\u2581 a \u2581 b \u2581\u2581",
]


def noisy(n: int, seed: int) -> list[str]:
    """Random strings over a mixed alphabet: unknown characters, runs of them, apostrophes, odd spaces."""
    rng = random.Random(seed)
    odd = ["\u2581", "\u00a0", "\u3000", "\t", "漢", "字", "😀", "👍🏽", "★", "ﬁ", "Ⅻ", "²", "½", "ｇ", "\u0301"]
    odd += ["ς", "Σ", "İ", "ǅ", "\u200b", "\u1c1f", "\x1c"]
    alphabet = [*"abcdefghijklmnopqrstuvwxyz ABC  éüßçñ'’'-_.,!?0123", *odd]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def source_digest() -> str:
    h = hashlib.sha256()
    for p in SOURCES:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def synthetic(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 12))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.5:
            words.insert(rng.randint(1, len(words)), rng.choice(PUNCT))
        out.append(" ".join(words))
    return out


def floats(a) -> list[float]:
    import numpy as np

    return [float(x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


def build(out: Path) -> None:
    import numpy as np
    import torch

    from fedkey.models.bundle import export_bundle
    from fedkey.models.checkpoint import Checkpoint
    from fedkey.models.cifg_lstm import CifgLstm, ModelConfig
    from fedkey.models.manifest import load_bundle
    from fedkey.models.onnx_local_update import Batches, OnnxLocalUpdate
    from fedkey.models.onnx_predict import OnnxPredictor
    from fedkey.models.sequences import message_sequences
    from fedkey.models.suggest import LstmSuggester
    from fedkey.models.tokenizer import BOS_ID, normalize, train_tokenizer
    from fedkey.protocol.pipeline import UpdatePipeline

    torch.set_num_threads(1)
    tok = train_tokenizer([normalize(s) for s in synthetic(600, seed=0)], vocab_size=120)
    config = ModelConfig(vocab_size=tok.vocab_size, embed_dim=16, hidden_dim=24)
    model = CifgLstm(config, seed=0)
    with torch.no_grad():  # non-zero biases so that the parity tests exercise them
        model.params["out_bias"].normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
        model.params["embedding"].mul_(4.0)  # sharper distributions: fewer near-ties in the suggestion test
    checkpoint = Checkpoint(model, tok, seq_len=SEQ_LEN, model_version=7, meta={"fixture": True})
    bundle_dir = out / "bundle"
    lexicon = sorted({normalize(w) for w in WORDS})  # the bundle's lexicon.txt
    export_bundle(checkpoint, bundle_dir, overwrite=True, lexicon=lexicon)
    bundle = load_bundle(bundle_dir)

    expected: dict = {"source_digest": source_digest(), "seq_len": SEQ_LEN, "model_version": 7}

    expected["tokenizer"] = [
        {"text": t, "normalized": normalize(t), "ids": tok.encode(normalize(t))} for t in TOKENIZER_CASES
    ] + [
        {"text": s, "normalized": normalize(s), "ids": tok.encode(normalize(s))}
        for s in synthetic(300, seed=5) + noisy(100, seed=6)
    ]
    expected["pieces"] = tok.pieces

    # Predict: fp32 and int8 logits after every token of one message, and the final state.
    message = "i am going home now"
    tokens = [BOS_ID, *tok.encode(normalize(message))]
    predict = {"message": message, "tokens": tokens}
    for role in ("predict", "predict_int8"):
        predictor = OnnxPredictor.from_bundle(bundle, role)
        state = predictor.zero_state(1)
        logits_all = []
        for t in tokens:
            logits, state = predictor.step(np.array([t], np.int64), state)
            logits_all.append(floats(logits[0]))
        predict[role] = {"logits": logits_all, "h": floats(state[0][0]), "c": floats(state[1][0])}
    expected["predict"] = predict

    # Whole-word suggestions (Python beam search over pieces, lexicon = the bundle's: the synthetic vocabulary).
    suggester = LstmSuggester(model, tok, lexicon)
    contexts = ["i am going home now", "see you tomorrow at noon", "what do you want to eat"]
    expected["suggest"] = {
        "lexicon": lexicon,
        "k": 3,
        "cases": [
            {"words": normalize(c).split(), "suggestions": suggester.suggest([normalize(c).split()], 3)[0]}
            for c in contexts
        ],
    }

    # Local update through local_update.onnx on a phone's messages.
    messages = [
        "See you tomorrow!",
        "I am going home now, really going home now because it's late and I need to sleep",
        "What are you doing today?",
        "love the cat",
        "ok",
    ]
    seqs = message_sequences(tok, [normalize(m) for m in messages], SEQ_LEN)
    batches = Batches.from_rows(seqs.inputs, seqs.targets, seqs.mask, batch_size=2)
    updater = OnnxLocalUpdate.from_bundle(bundle)
    params = {"steps": 5, "lr": 0.5, "grad_clip": 1.0, "delta_clip": 0.05, "batch_size": 2}
    result = updater(bundle.weights, batches, steps=5, lr=0.5, grad_clip=1.0, delta_clip=0.05)
    expected["train"] = {
        "messages": messages,
        **params,
        "tokens": batches.tokens.reshape(-1).tolist(),
        "targets": batches.targets.reshape(-1).tolist(),
        "mask": floats(batches.mask),
        "num_batches": int(batches.tokens.shape[0]),
        "delta": floats(result.delta),
        "losses": floats(result.losses),
        "delta_norm": float(result.delta_norm),
    }

    # The wire encoding of that delta (Kotlin encodes the same float32 values and must give the same bytes).
    stages = [
        {"kind": "clip", "norm": 0.04},
        {"kind": "random_k", "fraction": 0.1},
        {"kind": "rotate", "block": 256},
        {"kind": "quantize", "bits": 4, "chunk": 128},
    ]
    pipeline = UpdatePipeline(stages, layout=bundle.manifest.model.num_parameters)
    shared, private = 0x1234_5678_9ABC_DEF0, 0x0FED_CBA9_8765_4321
    encoded = pipeline.encode(result.delta, [99], 3, 7, shared_seeds=[shared], private_seeds=[private])
    expected["encode"] = {
        "stages": stages,
        "phone_id": 99,
        "round": 3,
        "model_version": 7,
        "shared_seed": str(shared),
        "private_seed": str(private),
        "message_hex": encoded.messages[0].hex(),
    }
    (out / "expected.json").write_text(json.dumps(expected, ensure_ascii=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "android_client/core/target/fixtures")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args()
    marker = args.out / "expected.json"
    if not args.force and marker.is_file():
        try:
            if json.loads(marker.read_text()).get("source_digest") == source_digest():
                print(f"fixtures in {args.out} are up to date")
                return 0
        except (OSError, json.JSONDecodeError):
            pass
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out)
    print(f"wrote Kotlin parity fixtures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
