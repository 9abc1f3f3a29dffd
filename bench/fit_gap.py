"""Why a federated model trails the central one: under-fitting everywhere, or mis-weighting some users?

Evaluates the central baseline's best checkpoint and a federated run's final checkpoint on the same
word positions of three text sets: training messages of heavy users (more than ``--heavy`` messages),
training messages of light users (fewer than ``--light``), and held-out users' messages. If the
federated model trails on all three alike, it has not fitted the text (too little or too inefficient
computation); if it trails mostly on one group's text, the average weighs that group too little. It
also gives each model's computation in passes over the training text: the central run's epochs, and
for the federated run the expected message passes of its schedule (:func:`fedkey.coverage.schedule_coverage`
replays who reported; each report trains ``local_epochs`` passes over at most
``max_messages_per_phone`` messages), divided by the messages of the training users.

    .venv/bin/python bench/fit_gap.py --fed-run runs/fed-quality-paced/compressed
        [--central-run runs/central-default] [--data data/chitchat] [--positions 5000] [--quick] [--write]

`--quick` evaluates 500 positions per set. `--write` replaces the docs/results.md section
"## Federated vs central: where the gap is (issue 5)".
Last line: ``RESULT central_passes=… fed_passes=… loss_gap_heavy=… loss_gap_light=… loss_gap_held_out=…
recall_ratio_heavy=… recall_ratio_light=… recall_ratio_held_out=…`` (gaps: federated minus central
loss in nats per piece; ratios: federated over central recall@1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from fed_quality import write_section

from fedkey.config import load_config
from fedkey.coverage import schedule_coverage
from fedkey.device_sim.federated_data import FederatedData
from fedkey.models.checkpoint import Checkpoint
from fedkey.models.evaluate import evaluate_model
from fedkey.simulate import build_setup

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Federated vs central: where the gap is (issue 5)"


def text_sets(data: FederatedData, heavy: int, light: int, seed: int = 0) -> dict[str, tuple[str, list[str]]]:
    """key -> (label, messages): training messages of heavy and of light users (each set shuffled by
    ``seed``), and the held-out users' messages."""
    rng = np.random.default_rng(seed)

    def shuffled(messages: list[str]) -> list[str]:
        return [messages[i] for i in rng.permutation(len(messages))]

    train = data.train_users
    return {
        "heavy": (
            f"training text, users with > {heavy} messages",
            shuffled([m for u in train if len(u.messages) > heavy for m in u.messages]),
        ),
        "light": (
            f"training text, users with < {light} messages",
            shuffled([m for u in train if len(u.messages) < light for m in u.messages]),
        ),
        "held_out": ("held-out users' text", [m for u in data.test_users for m in u.messages]),
    }


def load_model(path: Path) -> torch.nn.Module:
    """A checkpoint's model; loaded from a copy, as a run may be writing the file."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        shutil.copy(path, copy)
        return Checkpoint.load(copy).model


def fed_passes(run: Path, data_dir: Path) -> float:
    """Expected message passes of the run's schedule per message of the phones' training text."""
    config = load_config(run / "config.toml")
    coverage = schedule_coverage(build_setup(config, data_dir))
    trained = coverage.messages_trained(config.simulate.max_messages_per_phone, config.simulate.local_epochs)
    return float(trained.sum() / coverage.text.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fed-run", type=Path, required=True)
    parser.add_argument("--central-run", type=Path, default=ROOT / "runs" / "central-default")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat")
    parser.add_argument("--positions", type=int, default=5000, help="word positions evaluated per text set")
    parser.add_argument("--heavy", type=int, default=300)
    parser.add_argument("--light", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="500 positions per set")
    parser.add_argument("--write", action="store_true", help="update the section in docs/results.md")
    args = parser.parse_args()
    positions = 500 if args.quick else args.positions
    torch.set_num_threads(1)

    data = FederatedData.load(args.data)
    central_cfg = load_config(args.central_run / "config.toml")
    models = {
        "central": load_model(args.central_run / "best.pt"),
        "federated": load_model(args.fed_run / "checkpoint.pt"),
    }
    passes = {
        "central": float(json.loads((args.central_run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"]),
        "federated": fed_passes(args.fed_run, args.data),
    }
    rows = []
    result: dict[str, float] = {}
    for key, (name, messages) in text_sets(data, args.heavy, args.light).items():
        got = {
            model_name: evaluate_model(
                model,
                data.tokenizer,
                data.lexicon,
                messages,
                max_positions=positions,
                beam=central_cfg.eval.beam,
                max_word_pieces=central_cfg.eval.max_word_pieces,
            )
            for model_name, model in models.items()
        }
        c, f = got["central"], got["federated"]
        result[f"loss_gap_{key}"] = f["loss"] - c["loss"]
        result[f"recall_ratio_{key}"] = f["recall@1"] / c["recall@1"]
        rows.append(
            f"| {name} | {int(c['positions'])} | {c['recall@1']:.4f} | {f['recall@1']:.4f} | "
            f"{f['recall@1'] / c['recall@1']:.3f} | {c['loss']:.3f} | {f['loss']:.3f} |"
        )
    fed_round = load_config(args.fed_run / "config.toml").simulate.rounds
    lines = [
        TITLE,
        "",
        f"`bench/fit_gap.py` evaluates the central baseline's best checkpoint and the final model of `{args.fed_run}`",
        f"({fed_round} rounds) on the same word positions of three text sets (loss in nats per piece): shuffled",
        "training messages of heavy and of light users, and the held-out users' text in order, as the final",
        "evaluation takes it.",
        f"Computation, in passes over the training messages: central {passes['central']:.1f} epochs; federated",
        f"{passes['federated']:.1f} expected message passes (the schedule's reports × local passes over at most",
        "`max_messages_per_phone` messages).",
        "",
        "| text | positions | central recall@1 | federated recall@1 | ratio | central loss | federated loss |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Command:",
        "",
        f"    .venv/bin/python bench/fit_gap.py --fed-run {args.fed_run} --positions {positions} --write",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text)
    result = {"central_passes": passes["central"], "fed_passes": passes["federated"], **result}
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
