"""Per-round cost of the simulated fleet at scale: eligibility + sampling + round time.

A 100,000-phone population (default) with 1,000-phone cohorts: each round asks who is eligible at
the simulated time, samples a cohort uniformly with 130% over-selection, draws the cohort's device
profiles and simulates the round (field-guide times, dropouts, stragglers against a deadline), then
advances the simulated clock by the round's duration. Timing runs without tracemalloc; a second pass
under tracemalloc measures peak Python-visible memory (numpy buffers included).

    .venv/bin/python bench/population_scale.py [--quick] [--population N] [--cohort K] [--rounds R]

Last line: ``RESULT population=… cohort=… round_overhead_ms=… peak_mb=…``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from fedkey.device_sim.population import Population
from fedkey.server.sampling import sample_uniform

N_REAL_USERS = 628  # chitchat users with >= 20 messages (field notes)
MODEL_BYTES = 1.4e6 * 4  # a 1.4M-parameter model in fp32, downloaded
UPDATE_BYTES = 1.4e6 // 4  # a compressed update, uploaded (~2 bits per coordinate)
COMPUTE_DESKTOP_S = 3.0  # one local epoch on a desktop core
DEADLINE_S = 120.0


def run_rounds(population: Population, cohort: int, rounds: int) -> tuple[int, int]:
    """Runs ``rounds`` simulated rounds; returns total phones selected and total phones reported."""
    t_sim = 0.0
    selected = reported = 0
    for r in range(rounds):
        eligible = population.eligible_ids(t_sim)
        ids = sample_uniform(eligible, cohort, seed=population.seed, round_idx=r)
        outcome = population.simulate_round(
            ids,
            round_idx=r,
            deadline_s=DEADLINE_S,
            download_bytes=MODEL_BYTES,
            upload_bytes=UPDATE_BYTES,
            compute_desktop_s=COMPUTE_DESKTOP_S,
            target_reports=cohort,
        )
        selected += outcome.n_selected
        reported += outcome.n_reported
        t_sim += outcome.close_s + 60.0  # a minute of server work between rounds
    return selected, reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 rounds instead of 200")
    parser.add_argument("--population", type=int, default=100_000, help="phones in the population")
    parser.add_argument("--cohort", type=int, default=1_000, help="reports wanted per round (goal count)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds to time (default 200, 20 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="population seed")
    args = parser.parse_args()
    rounds = args.rounds or (20 if args.quick else 200)

    population = Population(args.population, N_REAL_USERS, args.seed)
    run_rounds(population, args.cohort, 2)  # warm-up
    start = time.perf_counter()
    selected, reported = run_rounds(population, args.cohort, rounds)
    per_round_ms = (time.perf_counter() - start) / rounds * 1e3

    tracemalloc.start()
    traced = Population(args.population, N_REAL_USERS, args.seed)  # construction counts in the peak
    run_rounds(traced, args.cohort, max(rounds // 10, 2))
    peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()

    print(f"population {args.population:,} phones, goal {args.cohort:,} reports per round, {rounds} rounds")
    print(f"  selected {selected / rounds:.0f} per round (130% over-selection), reported {reported / rounds:.0f}")
    print(f"  eligibility + sampling + round time: {per_round_ms:.2f} ms per round, peak {peak_mb:.2f} MB")
    print(
        f"RESULT population={args.population} cohort={args.cohort} "
        f"round_overhead_ms={per_round_ms:.2f} peak_mb={peak_mb:.2f}"
    )


if __name__ == "__main__":
    main()
