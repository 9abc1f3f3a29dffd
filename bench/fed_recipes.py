"""Federated training recipes side by side: which local and server settings learn the most per round?

Runs `fedkey simulate` once per recipe on the same data, model, cohort and seed (and rounds, unless a
recipe sets its own) with the default update pipeline (`fedkey.config.default_pipeline`), at most
``--parallel`` runs at a time, and tabulates each run's final held-out recall@1/@3 (the same held-out
word positions for every run), its sampled held-out recall@1 by round, the bytes it uploaded and its
wall time. A recipe is a named list of ``--set`` overrides on top of the shared ones (``--set``); the
default recipes are the comparison recorded in docs/results.md. A run folder that already holds a
finished run of exactly the same settings is read, not rerun; with ``--resume`` an unfinished one
continues from its checkpoint (the same result as an uninterrupted run).

    .venv/bin/python bench/fed_recipes.py [--rounds R] [--cohort C] [--positions N] [--set KEY=VALUE ...]
        [--recipe 'NAME:KEY=VALUE;KEY=VALUE' ...] [--parallel P] [--out runs/fed-recipes] [--resume]
        [--quick] [--write [--title T]]

`--write` replaces the docs/results.md section "## T (issue 5)" (default T: "Federated training
recipes"), so separate comparisons keep separate sections. `--quick` runs 2 rounds of 5 phones per
recipe (a smoke check of the measurement, not the figures).
Last line: ``RESULT rounds=… best=<recipe> best_recall=… recall_<recipe>=… …`` (held-out recall@1).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fed_quality import curve_blocks, curve_heading, finished_run, run_all, shown, write_section

from fedkey.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Federated training recipes"  # the docs/results.md section: "## TITLE (issue 5)"
#: Shared by the default recipes: the fed_quality recipe's local work (small batches, two passes, a
#: cosine-decayed local rate), one phone host per run so that two runs share this 2-core machine.
BASE = [
    "simulate.local_batch_size=4",
    "simulate.local_epochs=2",
    'simulate.local_lr_schedule="cosine"',
    "simulate.eval_every=5",
    "simulate.phone_hosts=1",
]
RECIPES = {
    "fedavgm-m0.7": ["simulate.optimizer.momentum=0.7"],
    "fedadam-lr0.01": ['simulate.optimizer.name="fedadam"', "simulate.optimizer.lr=0.01"],
    "fedavgm-m0.7-4-epochs": ["simulate.optimizer.momentum=0.7", "simulate.local_epochs=4"],
    # the same local computation as fedavgm-m0.7 in all: half the passes per round, twice the rounds
    "fedavgm-m0.7-1-epoch": ["simulate.optimizer.momentum=0.7", "simulate.local_epochs=1", "simulate.rounds=60"],
    "fedavgm-m0.9": ["simulate.optimizer.momentum=0.9"],  # the shipped default momentum
    "fedavgm-m0.7-local-lr2": ["simulate.optimizer.momentum=0.7", "simulate.local_lr=2.0"],
}


def parse_recipe(text: str) -> tuple[str, list[str]]:
    """'NAME:KEY=VALUE;KEY=VALUE' -> (NAME, [KEY=VALUE, ...])."""
    name, sep, rest = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise argparse.ArgumentTypeError(f"recipe {text!r}: expected NAME:KEY=VALUE;KEY=VALUE (NAME of [A-Za-z0-9._-])")
    return name, [item.strip() for item in rest.split(";") if item.strip()]


def table(
    title: str,
    runs: dict[str, dict],
    common: list[str],
    recipes: dict[str, list[str]],
    commands: list[str],
    parallel: int,
) -> str:
    first = next(iter(runs.values()))
    pipeline = load_config(None, common).pipeline.describe()
    lines = [
        f"## {title} (issue 5)",
        "",
        f"`bench/fed_recipes.py` runs `fedkey simulate` once per recipe, {first['simulate'].cohort_size} reporting "
        "phones a round (unless a recipe sets its own rounds or cohort), same data, model and seed, update pipeline",
        f"{pipeline} unless a recipe sets its own (`pipeline=[]`: raw float32 deltas), and compares the final",
        "held-out recall@1 (the same held-out word positions for every run). Settings shared by all: "
        + ", ".join(f"`{c}`" for c in common)
        + ".",
        "Reports are the phone updates the server averaged over the whole run (the local computation spent).",
        f"Wall times are upper bounds: the runs went {parallel} at a time, and other jobs may have shared the machine.",
        "",
        "| recipe | its settings | rounds | cohort | reports | held-out recall@1 | recall@3 | uploaded | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, final in runs.items():
        held = final["held_out_users"]
        settings = ", ".join(f"`{o}`" for o in recipes[name]) or "-"
        lines.append(
            f"| {name} | {settings} | {final['rounds']} | {final['simulate'].cohort_size} | {final['reports']} | "
            f"{held['recall@1']:.4f} | {held['recall@3']:.4f} | "
            f"{final['bytes_up'] / 1e6:.1f} MB | {final['wall_time_s'] / 60:.1f} min |"
        )
    curves = [{r: recall for r, recall, _ in run["curve"]} for run in runs.values()]
    same_rounds = len({final["rounds"] for final in runs.values()}) == 1
    blocks = curve_blocks(sorted(set().union(*curves)))
    by_tenth = "by tenth of each run (its rounds differ: the evaluation at or before it)"
    lines += [
        "",
        "Sampled held-out recall@1 "
        + (curve_heading(blocks) if same_rounds else by_tenth)
        + " (`simulate.eval_users` users, `simulate.eval_positions` positions;",
        "noisier than the final figures), from `RUN/metrics.jsonl`:",
        "",
        ("| round | " if same_rounds else "| share of the run | ") + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    if same_rounds:
        for label, block in blocks:
            cells = []
            for curve in curves:
                seen = [curve[rnd] for rnd in block if rnd in curve]
                cells.append(f"{sum(seen) / len(seen):.3f}" if seen else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    else:
        for tenth in range(1, 11):
            cells = []
            for curve, final in zip(curves, runs.values(), strict=True):
                done = [r for r in curve if r <= final["rounds"] * tenth / 10]
                cells.append(f"{curve[max(done)]:.3f} (r{max(done)})" if done else "-")
            lines.append(f"| {tenth * 10}% | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", "", *[f"    {c}" for c in commands], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fed-recipes")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--cohort", type=int, default=100)
    parser.add_argument("--positions", type=int, default=20000, help="held-out word positions of the final evaluations")
    parser.add_argument("--set", dest="overrides", action="append", default=None, help="settings shared by all recipes")
    parser.add_argument(
        "--recipe", type=parse_recipe, action="append", default=None, help="NAME:KEY=VALUE;KEY=VALUE (repeatable)"
    )
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--resume", action="store_true", help="continue unfinished runs in OUT from their checkpoints")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 phones: checks the measurement runs")
    parser.add_argument("--write", action="store_true", help="update the section in docs/results.md")
    parser.add_argument(
        "--title", default=TITLE, help=f"the section's title in docs/results.md (default {TITLE!r}): one per comparison"
    )
    args = parser.parse_args()

    recipes = dict(args.recipe) if args.recipe else RECIPES
    shared = BASE if args.overrides is None else args.overrides
    rounds, cohort, positions = (2, 5, 1000) if args.quick else (args.rounds, args.cohort, args.positions)
    common = [
        'model.preset="default"',
        f"simulate.rounds={rounds}",
        f"simulate.cohort_size={cohort}",
        "simulate.export_bundle=false",
        f"eval.max_positions={positions}",
        *shared,
    ]
    # --quick keeps its 2 rounds even where a recipe sets its own
    jobs = {name: [*common, *extra, *(["simulate.rounds=2"] if args.quick else [])] for name, extra in recipes.items()}
    run_all(jobs, args.out, args.data, args.parallel, args.resume)
    runs = {name: finished_run(args.out / name) for name in recipes}
    commands = [
        f"fedkey simulate --out {shown(args.out / name)} --data {shown(args.data)} "
        + " ".join(f"--set '{o}'" for o in overrides)
        for name, overrides in jobs.items()
    ]
    commands.append(
        f"python bench/fed_recipes.py --out {shown(args.out)} --rounds {rounds} --cohort {cohort} "
        f"--positions {positions} --parallel {args.parallel} "
        + "".join(f"--set '{o}' " for o in shared)
        + "".join(f"--recipe '{name}:{';'.join(extra)}' " for name, extra in recipes.items())
        + (f"--title '{args.title}' " if args.title != TITLE else "")
        + "--write"
    )
    text = table(args.title, runs, shared, recipes, commands, args.parallel)
    print(text)
    if args.write and not args.quick:
        write_section(text)
    recall = {name: run["held_out_users"]["recall@1"] for name, run in runs.items()}
    best = max(recall, key=recall.__getitem__)
    print(
        f"RESULT rounds={rounds} best={best} best_recall={recall[best]:.4f} "
        + " ".join(f"recall_{re.sub(r'[^A-Za-z0-9]', '_', name)}={r:.4f}" for name, r in recall.items())
    )


if __name__ == "__main__":
    main()
