"""How much of the fleet (and of its text) a run's schedule lets train: back-to-back vs paced rounds.

Replays, with :func:`fedkey.coverage.schedule_coverage`, the selection and reporting of the
federated-quality runs (chitchat, default model, 100 reports per round, 2 local passes of batch 4,
220 rounds; the same draws as the real runs) under several schedules, for both update pipelines (the
upload size changes who straggles), and tabulates the simulated span, the reports per round, the
phones that never report and the share of the training text they hold. Nothing is trained: a replay
takes about a second.

    .venv/bin/python bench/fleet_coverage.py [--data data/chitchat] [--rounds 220] [--quick] [--write]

`--quick` replays 60 rounds (the same measurement, shorter runs). `--write` replaces the docs/results.md
section "## Fleet coverage: who a schedule lets train (issue 5)".
Last line: ``RESULT rounds=… text_never_back_to_back=… text_never_paced=… text_never_paced_no_goal_cut=…``
(the compressed pipeline's shares of the text on phones that never report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fed_quality import write_section

from fedkey.config import load_config
from fedkey.coverage import schedule_coverage
from fedkey.simulate import build_setup

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Fleet coverage: who a schedule lets train (issue 5)"
#: The local work of bench/fed_quality.py's recipe: it sets each phone's compute time.
BASE = [
    'model.preset="default"',
    "simulate.cohort_size=100",
    "simulate.local_epochs=2",
    "simulate.local_batch_size=4",
]
PIPELINES = {"compressed": [], "uncompressed": ["pipeline=[]"]}
SCHEDULES = {
    "back_to_back": [],
    "paced_300s": ["simulate.round_interval_s=300"],
    "paced": ["simulate.round_interval_s=600"],
    "paced_no_goal_cut": ["simulate.round_interval_s=600", "simulate.over_selection=1.0"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat")
    parser.add_argument("--rounds", type=int, default=220)
    parser.add_argument("--quick", action="store_true", help="replay 60 rounds")
    parser.add_argument("--write", action="store_true", help="update the section in docs/results.md")
    args = parser.parse_args()
    rounds = 60 if args.quick else args.rounds

    lines = [
        TITLE,
        "",
        "`bench/fleet_coverage.py` replays the selection and reporting of the federated-quality runs (chitchat,",
        f"default model, 100 reports per round, 2 local passes of batch 4, {rounds} rounds, seed 0) without training",
        "(`fedkey.coverage.schedule_coverage`: the strategy's own draws, so a real run of the same settings",
        "reports the same phones). Back to back, rounds close at the goal count's report within about a minute,",
        "so the run spans a few simulated hours and only meets the phones whose night falls in them; pacing the",
        "rounds (`simulate.round_interval_s`) spreads them over the day. Over-selection with a goal count",
        "(`simulate.over_selection` = 1.3) then still cuts the slowest reports of every round, and phones that",
        "are slow every time never report; with `over_selection` = 1.0 the deadline (300 s) alone closes a round.",
        "",
        "| schedule | settings | pipeline | simulated span | reports / round (fewest–most) | phones never reporting "
        "| their share of the text | most reports by one phone |",
        "|---|---|---|---|---|---|---|---|",
    ]
    result: dict[str, float] = {}
    for name, schedule in SCHEDULES.items():
        for pipeline, pipeline_set in PIPELINES.items():
            config = load_config(None, [*BASE, *schedule, *pipeline_set])
            c = schedule_coverage(build_setup(config, args.data), rounds)
            settings = ", ".join(f"`{s}`" for s in schedule) or "defaults"
            lines.append(
                f"| {name} | {settings} | {pipeline} | {c.span_s / 3600:.1f} h | {c.reports_per_round:.1f} "
                f"({c.per_round.min()}–{c.per_round.max()}) | "
                f"{c.phones_never} of {len(c.reports)} | {c.text_never:.1%} | {int(c.reports.max())} |"
            )
            if pipeline == "compressed":
                result[f"text_never_{name}"] = c.text_never
    lines += ["", "Command:", "", f"    .venv/bin/python bench/fleet_coverage.py --rounds {rounds} --write", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text)
    keys = ("text_never_back_to_back", "text_never_paced", "text_never_paced_no_goal_cut")
    print(f"RESULT rounds={rounds} " + " ".join(f"{k}={result[k]:.3f}" for k in keys))


if __name__ == "__main__":
    main()
