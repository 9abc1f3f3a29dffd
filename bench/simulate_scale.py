"""`fedkey simulate` end to end at scale: does peak memory follow the cohort, not the population?

Runs `fedkey simulate` (Flower simulation engine, Ray, phone hosts, the default update pipeline) in a
child process for a few rounds at three (population, cohort) points and samples the memory of the
child's whole process tree (server, Ray, phone hosts) every 0.1 s: its peak footprint, shared pages
counted once (``tree_memory.py``), and the RSS summed over the tree beside it:

- the headline: a 100,000-phone population with 1,000-phone cohorts (issue 5, "Scale");
- the same cohort from a population 5× smaller: memory bounded by the cohort stays the same;
- the same population with 10× smaller cohorts: what the cohort itself costs.

Phones beyond chitchat's real training users type a real user's text (`population.synthetic_user_mapping`).
The local work is kept small so the rounds are about the fleet (small model, ≤ 16 messages, one pass
in batches of 16); every reporting phone still trains, is encoded, decoded and aggregated.

    .venv/bin/python bench/simulate_scale.py [--quick] [--data data/chitchat] [--rounds R] [--set KEY=VALUE ...]

`--quick` scales everything down 20× (populations 5,000 and 1,000, cohorts 50 and 5).
Last line: ``RESULT population=… cohort=… peak_mb=… peak_mb_smaller_population=… peak_mb_smaller_cohort=…
s_per_round=…``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from fed_quality import start_simulation
from tree_memory import watch_peak

ROOT = Path(__file__).resolve().parents[1]


def simulate(data: Path, population: int, cohort: int, rounds: int, extra: list[str]) -> dict[str, Any]:
    """One `fedkey simulate` run (``extra``: more --set overrides): peak tree footprint and summed RSS (MB),
    the footprint's parts at its peak, rounds run, mean wall seconds per round after the first."""
    overrides = {
        "model.preset": '"small"',
        "population.size": population,
        "simulate.cohort_size": cohort,
        "simulate.rounds": rounds,
        "simulate.max_messages_per_phone": 16,
        "simulate.local_epochs": 1,
        "simulate.local_batch_size": 16,
        "simulate.eval_every": 0,
        "eval.max_positions": 200,
        "simulate.export_bundle": "false",
    }
    with tempfile.TemporaryDirectory(prefix="fedkey-scale-") as tmp:
        out = Path(tmp) / "run"
        settings = [f"{key}={value}" for key, value in overrides.items()] + extra
        child = start_simulation(out, data, settings, resume=False)
        peak = watch_peak(child, period_s=0.1)
        if child.returncode != 0:
            sys.exit(f"fedkey simulate failed:\n{(out / 'simulate.log').read_text()[-3000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["wall_time_s"] for r in rows]
    return {
        "peak_mb": peak.footprint / 1e6,
        "parts": peak.at_peak.describe(),
        "rss_mb": peak.rss / 1e6,
        "rounds": len(rows),
        "reported": sum(r["reported"] for r in rows) / len(rows),
        "s_per_round": (times[-1] - times[0]) / max(1, len(rows) - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="populations and cohorts 20x smaller")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat", help="a prepared data folder")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per run (default 3, 2 with --quick)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="more simulate settings, e.g. another pipeline"
    )
    args = parser.parse_args()
    scale = 20 if args.quick else 1
    rounds = args.rounds or (2 if args.quick else 3)
    population, cohort = 100_000 // scale, 1_000 // scale
    points = {
        "headline": (population, cohort),
        "smaller_population": (population // 5, cohort),
        "smaller_cohort": (population, cohort // 10),
    }
    results = {}
    print(f"{'population':>10} {'cohort':>6} {'reported/round':>14} {'s/round':>8} {'peak MB':>8} {'RSS sum':>8}")
    for name, (pop, coh) in points.items():
        results[name] = r = simulate(args.data, pop, coh, rounds, args.overrides)
        print(
            f"{pop:10,} {coh:6,} {r['reported']:14.0f} {r['s_per_round']:8.1f} {r['peak_mb']:8.0f} {r['rss_mb']:8.0f}"
        )
    print("footprint at each peak, MB: private pages by process, then shared pages (once)")
    for name, (pop, coh) in points.items():
        print(f"  {pop:,} phones, cohort {coh:,}: {results[name]['parts']}")
    head = results["headline"]
    print(
        f"RESULT population={population} cohort={cohort} peak_mb={head['peak_mb']:.0f} "
        f"peak_mb_smaller_population={results['smaller_population']['peak_mb']:.0f} "
        f"peak_mb_smaller_cohort={results['smaller_cohort']['peak_mb']:.0f} s_per_round={head['s_per_round']:.1f}"
    )


if __name__ == "__main__":
    main()
