"""What a phone trains on in a round, and how many passes a run's schedule gives each group's text.

Two knobs of the local work change how a federated run covers the fleet's text: the window length
(`simulate.seq_len`: longer windows, fewer of them, fewer local steps at the same passes) and the cap on
the messages a phone trains on in a round (`simulate.max_messages_per_phone`: a heavy user's phone
trains a fresh sample of that many of its messages). For each variant (``--set`` overrides on top of
the federated-quality recipe: the default model, 25 phones a round, 2 local passes of batch 4, rounds
10 minutes apart, the deadline alone closing a round) this tabulates, from the phones' real text and
without training anything: the mean local steps and messages of a report, the share of the fleet's
text one participation of every phone would cover, and over the run's schedule
(:func:`fedkey.coverage.schedule_coverage`, the same draws as a real run) the expected passes over the
text of heavy users (more than ``--heavy`` messages) and of the others; each report trains
``local_epochs`` passes over at most ``max_messages_per_phone`` messages. A minute or two of tokenizing
and replaying.

    .venv/bin/python bench/local_work.py [--data data/chitchat] [--rounds 880] [--heavy 64] [--quick] [--write]

`--quick` replays 88 rounds (the same measurement, a shorter schedule). `--write` replaces the
docs/results.md section "## Local work: what a phone trains on in a round (issue 5)".
Last line: ``RESULT rounds=… steps_<variant>=… heavy_passes_<variant>=… light_passes_<variant>=… …``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from fed_quality import write_section

from fedkey.config import load_config
from fedkey.coverage import schedule_coverage
from fedkey.simulate import build_setup, local_steps

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Local work: what a phone trains on in a round (issue 5)"
#: The recipe of bench/fed_quality.py's 880-round pairs (the settings that set who reports and how much
#: each phone trains).
BASE = [
    'model.preset="default"',
    "simulate.cohort_size=25",
    "simulate.local_epochs=2",
    "simulate.local_batch_size=4",
    "simulate.round_interval_s=600",
    "simulate.over_selection=1.0",
    "pipeline=[]",
]
VARIANTS = {
    "default": [],
    "seq_len-32": ["simulate.seq_len=32"],
    "messages-128": ["simulate.max_messages_per_phone=128"],
    "messages-256": ["simulate.max_messages_per_phone=256"],
    "messages-all": ["simulate.max_messages_per_phone=0"],
}


def measure(overrides: list[str], data: Path, rounds: int, heavy: int) -> dict[str, float]:
    """One variant's local work per report and passes per group's text over `rounds` rounds."""
    config = load_config(None, [*BASE, f"simulate.rounds={rounds}", *overrides])
    sim = config.simulate
    setup = build_setup(config, data)
    coverage = schedule_coverage(setup)  # the default population: one phone per training user
    text = coverage.text
    trained = np.minimum(text, sim.max_messages_per_phone or text.max())
    passes = coverage.messages_trained(sim.max_messages_per_phone, sim.local_epochs)
    is_heavy = text > heavy
    return {
        "steps": float(local_steps(setup.data, config).mean()),
        "messages": float(trained.mean()),
        "covered": float(trained.sum() / text.sum()),
        "reports": float(coverage.reports.sum()),
        "heavy_passes": float(passes[is_heavy].sum() / text[is_heavy].sum()),
        "light_passes": float(passes[~is_heavy].sum() / text[~is_heavy].sum()),
        "heavy_text": float(text[is_heavy].sum() / text.sum()),
    }


def table(results: dict[str, dict[str, float]], rounds: int, heavy: int, command: str) -> str:
    heavy_text = next(iter(results.values()))["heavy_text"]
    lines = [
        TITLE,
        "",
        "`bench/local_work.py`: per variant of the federated-quality recipe ("
        + ", ".join(f"`{b}`" for b in BASE)
        + f"), {rounds} rounds, from the phones' real text and the schedule's replay (nothing trained). Steps and",
        "messages are a report's means over the training users; covered is the share of the fleet's training",
        "messages one participation of every phone trains on; passes are the expected passes of the whole run",
        f"over the text of heavy users (more than {heavy} messages; they hold {heavy_text:.0%} of the training",
        "messages) and of the others.",
        "",
        "| variant | its settings | local steps | messages | covered | reports | heavy passes | others' passes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        settings = ", ".join(f"`{o}`" for o in VARIANTS[name]) or "-"
        lines.append(
            f"| {name} | {settings} | {r['steps']:.1f} | {r['messages']:.1f} | {r['covered']:.1%} | "
            f"{r['reports']:.0f} | {r['heavy_passes']:.1f} | {r['light_passes']:.1f} |"
        )
    lines += ["", "Command:", "", f"    {command}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat")
    parser.add_argument("--rounds", type=int, default=880)
    parser.add_argument("--heavy", type=int, default=64, help="a heavy user holds more than this many messages")
    parser.add_argument("--quick", action="store_true", help="replay 88 rounds")
    parser.add_argument("--write", action="store_true", help="update the section in docs/results.md")
    args = parser.parse_args()
    rounds = 88 if args.quick else args.rounds

    results = {name: measure(extra, args.data, rounds, args.heavy) for name, extra in VARIANTS.items()}
    command = f".venv/bin/python bench/local_work.py --rounds {rounds} --heavy {args.heavy} --write"
    text = table(results, rounds, args.heavy, command)
    print(text)
    if args.write and not args.quick:
        write_section(text)
    print(
        f"RESULT rounds={rounds} "
        + " ".join(
            f"{key}_{re.sub(r'[^A-Za-z0-9]', '_', name)}={r[key]:.2f}"
            for name, r in results.items()
            for key in ("steps", "heavy_passes", "light_passes")
        )
    )


if __name__ == "__main__":
    main()
