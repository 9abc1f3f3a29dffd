"""Federated quality against the server-trained baseline: does `fedkey simulate` reach ≥ 97% of it?

Runs `fedkey simulate` twice, side by side, on the same prepared data, model preset, rounds and seed:
once with the default update pipeline (`fedkey.config.default_pipeline`, or the one a `--set pipeline=…`
gives: "compressed") and once with an empty pipeline (dense fp32 updates: "uncompressed"). Each run's
held-out recall@1 (final.json) is divided by the recall@1 of a `fedkey train-central` run's best
checkpoint of the same model preset, evaluated here on the same held-out word positions; the uploaded
bytes are summed from metrics.jsonl.
A run folder that already holds a finished run of exactly the same settings is read, not rerun; with
``--resume`` an unfinished one continues from its checkpoint.

    .venv/bin/python bench/fed_quality.py --central-run runs/central-default [--config RECIPE.toml]
        [--rounds R] [--cohort C] [--positions N] [--set KEY=VALUE ...] [--out runs/fed-quality]
        [--resume] [--quick] [--write [--title T]]

`--config` names the recipe (a fedkey TOML, e.g. ``configs/chitchat-quality.toml``: the one issue 5's
figure is measured with); the flags and ``--set`` apply on top of it. `--quick` runs 2 rounds of 5
phones (a smoke check of the measurement, not the figure). `--title` writes a section of its own, for
a setting compared against the main one.
Last line: ``RESULT rounds=… compressed_over_central=… uncompressed_over_central=… compressed_mb_up=…
uncompressed_mb_up=…``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from fedkey.config import default_pipeline, load_config
from fedkey.models.checkpoint_file import CheckpointFile
from fedkey.plots import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Federated quality"
VARIANTS = {"compressed": [], "uncompressed": ["pipeline=[]"]}


def shown(path: Path) -> str:
    """A path as the commands in docs/results.md give it: relative to the repository when inside it."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def start_simulation(
    out: Path, data: Path, overrides: list[str], resume: bool, config: Path | None = None
) -> subprocess.Popen:
    """Starts one `fedkey simulate` run (of `config`, if given, with the overrides on top) in a child
    process (its output goes to OUT/simulate.log); with `resume`, a run folder holding a checkpoint
    continues from it (same result as an uninterrupted run)."""
    command = [str(Path(sys.executable).with_name("fedkey")), "simulate", "--out", str(out), "--data", str(data)]
    if config is not None:
        command += ["--config", str(config)]
    if resume and (out / "checkpoint.pt").is_file():
        command.append("--resume")
    for item in overrides:
        command += ["--set", item]
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "simulate.log").open("a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"OMP_NUM_THREADS": "1"})


def finished_run(out: Path) -> dict:
    """A finished run's final.json plus its uploaded bytes and wall time from metrics.jsonl."""
    final = json.loads((out / "final.json").read_text())
    rows = read_jsonl(out / "metrics.jsonl")
    final["bytes_up"] = sum(r["bytes_up"] for r in rows)
    final["wall_time_s"] = rows[-1]["wall_time_s"]
    final["reports"] = sum(r["reported"] - r["rejected"] for r in rows)
    final["curve"] = [(r["round"], r["recall@1"], r["loss"]) for r in rows if r.get("recall@1") is not None]
    config = load_config(out / "config.toml")
    final["simulate"] = config.simulate
    final["pipeline"] = config.pipeline.describe()
    return final


def already_done(out: Path, overrides: list[str], config: Path | None = None) -> bool:
    """Whether OUT holds a finished run whose effective settings are exactly those of `config` (or the
    defaults) with these overrides."""
    if not (out / "final.json").is_file() or not (out / "config.toml").is_file():
        return False
    return load_config(out / "config.toml").model_dump() == load_config(config, overrides).model_dump()


def run_all(
    jobs: dict[str, list[str]], out: Path, data: Path, parallel: int, resume: bool, config: Path | None = None
) -> None:
    """Runs every job (name -> overrides on top of `config`, or of the defaults) not already done in
    OUT/name, at most ``parallel`` at a time; exits if one fails."""
    waiting = [name for name, overrides in jobs.items() if not already_done(out / name, overrides, config)]
    running: dict[str, subprocess.Popen] = {}
    while waiting or running:
        while waiting and len(running) < parallel:
            name = waiting.pop(0)
            running[name] = start_simulation(out / name, data, jobs[name], resume, config)
        time.sleep(2)
        for name, child in list(running.items()):
            code = child.poll()
            if code is None:
                continue
            del running[name]
            if code != 0:
                for other in running.values():
                    other.terminate()
                sys.exit(ended_early(name, out / name, code))


def ended_early(name: str, run: Path, code: int) -> str:
    """Why a run ended without finishing: stopped by a signal (resumable), or failed."""
    if code in (130, 143) and (run / "checkpoint.pt").is_file():  # `fedkey simulate` after Ctrl-C / SIGTERM
        done = CheckpointFile.load(run / "checkpoint.pt").meta["round"]
        return f"the {name} run was stopped after round {done}: rerun this command with --resume to continue it"
    return f"the {name} run failed: see {run / 'simulate.log'}"


def central_recall(run: Path, data: Path, max_positions: int) -> dict:
    """The central run's best checkpoint on the same held-out positions as the federated runs' final evaluation."""
    from fedkey.device_sim.federated_data import FederatedData
    from fedkey.models.checkpoint import Checkpoint
    from fedkey.models.evaluate import evaluate_model

    fd = FederatedData.load(data)
    cfg = load_config(run / "config.toml")
    held = evaluate_model(
        Checkpoint.load(run / "best.pt").model,
        fd.tokenizer,
        fd.lexicon,
        [m for u in fd.test_users for m in u.messages],
        max_positions=max_positions,
        beam=cfg.eval.beam,
        max_word_pieces=cfg.eval.max_word_pieces,
    )
    return {"held_out_users": held, "steps": json.loads((run / "final.json").read_text())["steps"]}


#: Most rows a table of sampled recall by round gets: longer runs show the mean over blocks of evaluations.
CURVE_ROWS = 40


def curve_blocks(rounds: list[int], max_rows: int = CURVE_ROWS) -> list[tuple[str, list[int]]]:
    """Sorted evaluation rounds cut into at most ``max_rows`` consecutive blocks of equal size (the last
    may be shorter), each with its label: the round itself, or "first-last" for a block of several."""
    size = -(-len(rounds) // max_rows) if rounds else 1
    blocks = [rounds[i : i + size] for i in range(0, len(rounds), size)]
    return [(str(b[0]) if len(b) == 1 else f"{b[0]}-{b[-1]}", b) for b in blocks]


def curve_heading(blocks: list[tuple[str, list[int]]]) -> str:
    """How the rows of a curve table read: one evaluation each, or the mean over each block of them."""
    size = max(len(rounds) for _, rounds in blocks)
    return "by round" if size == 1 else f"by round, each row the mean of {size} evaluations (each is noisy)"


def table(title: str, central: dict, runs: dict[str, dict], preset: str, commands: list[str]) -> str:
    base = central["held_out_users"]["recall@1"]
    comp, dense = (runs[name]["held_out_users"]["recall@1"] / base for name in ("compressed", "uncompressed"))
    rounds = runs["compressed"]["rounds"]
    default_tag = ", the default" if runs["compressed"]["pipeline"] == default_pipeline().describe() else ""
    lines = [
        f"## {title} (issue 5)",
        "",
        "`bench/fed_quality.py` runs `fedkey simulate` twice side by side (the update pipeline",
        f"{runs['compressed']['pipeline']}{default_tag}, against dense fp32 updates) and divides each final held-out",
        "recall@1 by that of the central baseline's best checkpoint on the same held-out word positions",
        "(commands below). Wall times are",
        "upper bounds: the 2-core machine ran other jobs. A run continued with `--resume` gives the same",
        "result as an uninterrupted one.",
        f"After {rounds} rounds federated training reaches {comp:.0%} of the central recall@1 with compression",
        f"and {dense:.0%} without, uploading {runs['uncompressed']['bytes_up'] / runs['compressed']['bytes_up']:.0f}×",
        f"fewer bytes with it. The issue's target is 97%{' (met)' if min(comp, dense) >= 0.97 else ' (not met yet)'}.",
        "",
        "| model | rounds | held-out recall@1 | recall@3 | of central recall@1 | uploaded | wall time |",
        "|---|---|---|---|---|---|---|",
        f"| central ({preset}, {central['steps']} steps) | - | {base:.4f} | "
        f"{central['held_out_users']['recall@3']:.4f} | 1.000 | - | - |",
    ]
    for name, final in runs.items():
        held = final["held_out_users"]
        lines.append(
            f"| federated, {name} | {final['rounds']} | {held['recall@1']:.4f} | {held['recall@3']:.4f} | "
            f"{held['recall@1'] / base:.3f} | {final['bytes_up'] / 1e6:.1f} MB | {final['wall_time_s'] / 60:.1f} min |"
        )
    sim = runs["compressed"]["simulate"]
    evaluated = [[rnd for rnd, _, _ in run["curve"]] for run in runs.values()]
    if any(rounds != evaluated[0] for rounds in evaluated):
        raise SystemExit("the runs were evaluated at different rounds: their curves cannot share a table")
    blocks = curve_blocks(evaluated[0])
    lines += [
        "",
        f"Each phone trains on at most {sim.max_messages_per_phone or 'all'} of its user's messages a round",
        f'(`simulate.message_selection = "{sim.message_selection}"`). The runs\' sampled held-out recall@1 and',
        f"the phones' mean local loss (nats per piece) {curve_heading(blocks)}, from `RUN/metrics.jsonl`:",
        "",
        "| round | " + " | ".join(f"{name} recall@1 | {name} loss" for name in runs) + " |",
        "|---|" + "---|---|" * len(runs),
    ]
    curves = [{rnd: (recall, loss) for rnd, recall, loss in run["curve"]} for run in runs.values()]
    for label, block in blocks:
        cells = []
        for curve in curves:
            recall, loss = (sum(curve[rnd][k] for rnd in block) / len(block) for k in (0, 1))
            cells.append(f"{recall:.3f} | {loss:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Commands:", "", *[f"    {c}" for c in commands], ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replaces (or appends) the docs/results.md section whose heading is the first line of ``text``."""
    path = ROOT / "docs" / "results.md"
    doc = path.read_text()
    pattern = re.compile(re.escape(text.splitlines()[0]) + r"\n.*?(?=\n## |\Z)", re.S)
    block = text.rstrip("\n") + "\n"  # a blank line before the next section's heading
    doc = pattern.sub(lambda _: block, doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--central-run", type=Path, default=ROOT / "runs" / "central-default")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fed-quality")
    parser.add_argument(
        "--config", type=Path, default=None, help="the recipe: a fedkey TOML (e.g. configs/chitchat-quality.toml)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's, else 300")
    parser.add_argument("--cohort", type=int, default=None, help="default: the config's, else 100")
    parser.add_argument(
        "--positions", type=int, default=20000, help="held-out word positions of every final evaluation (0 = all)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra simulate settings")
    parser.add_argument("--resume", action="store_true", help="continue runs already in OUT from their checkpoints")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 phones: checks the measurement runs")
    parser.add_argument("--write", action="store_true", help="update the section in docs/results.md")
    parser.add_argument(
        "--title", default=TITLE, help=f"the section's title in docs/results.md (default {TITLE!r}): one per setting"
    )
    args = parser.parse_args()

    if not (args.central_run / "final.json").is_file():  # before hours of federated training, not after
        sys.exit(
            f"{args.central_run} holds no finished central run (no final.json): finish it first "
            f"(fedkey train-central --data {shown(args.data)} --out {shown(args.central_run)} --resume)"
        )
    preset = load_config(args.central_run / "config.toml").model.preset
    recipe = load_config(args.config).simulate if args.config else None
    rounds = args.rounds or (recipe.rounds if recipe else 300)
    cohort = args.cohort or (recipe.cohort_size if recipe else 100)
    rounds, cohort, positions = (2, 5, 1000) if args.quick else (rounds, cohort, args.positions)
    common = [
        f'model.preset="{preset}"',
        f"simulate.rounds={rounds}",
        f"simulate.cohort_size={cohort}",
        "simulate.export_bundle=false",
        f"eval.max_positions={positions}",
        *args.overrides,
    ]
    jobs = {name: [*common, *extra] for name, extra in VARIANTS.items()}
    run_all(jobs, args.out, args.data, 2, args.resume, args.config)
    # imported here, not at the top: fed_recipes and simulate_scale import this module to run `fedkey
    # simulate` children, and torch (a CUDA build) would cost their long-lived parent process 650 MB
    import torch

    torch.set_num_threads(1)
    central = central_recall(args.central_run, args.data, positions)
    runs = {name: finished_run(args.out / name) for name in VARIANTS}
    recipe_flag = f"--config {shown(args.config)} " if args.config else ""
    commands = [
        f"fedkey simulate --out {shown(args.out / name)} --data {shown(args.data)} {recipe_flag}"
        + " ".join(f"--set '{o}'" for o in job)
        for name, job in jobs.items()
    ]
    commands.append(
        f"python bench/fed_quality.py --central-run {shown(args.central_run)} --out {shown(args.out)} {recipe_flag}"
        f"--rounds {rounds} --cohort {cohort} --positions {positions} "
        + "".join(f"--set '{o}' " for o in args.overrides)
        + (f"--title '{args.title}' " if args.title != TITLE else "")
        + "--write"
    )
    text = table(args.title, central, runs, preset, commands)
    print(text)
    if args.write and not args.quick:
        write_section(text)
    base = central["held_out_users"]["recall@1"]
    comp, dense = runs["compressed"], runs["uncompressed"]
    print(
        f"RESULT rounds={rounds} compressed_over_central={comp['held_out_users']['recall@1'] / base:.3f} "
        f"uncompressed_over_central={dense['held_out_users']['recall@1'] / base:.3f} "
        f"compressed_mb_up={comp['bytes_up'] / 1e6:.1f} uncompressed_mb_up={dense['bytes_up'] / 1e6:.1f}"
    )


if __name__ == "__main__":
    main()
