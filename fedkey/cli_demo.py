"""`fedkey demo`: what `make demo` runs — `fedkey simulate` on chitchat with a preset sized for minutes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedkey.cli_common import SetOption, console, effective_config, user_errors
from fedkey.cli_simulate import simulate_command
from fedkey.run_lock import run_folder_lock

#: The demo preset on top of the embedded defaults (chitchat, compression on, local and central DP
#: off): the small model; 200 reports a round (260 phones selected); each phone makes 2 passes over its
#: data in batches of 4 (about 20 SGD steps: with the default 1 pass in batches of 16, ~3 steps, 12 rounds
#: only reach the unigram's recall); server momentum 0.7 (0.9 overshoots with these larger updates);
#: held-out evaluation every 2 rounds, the final one on 10,000 word positions; rounds paced 2 simulated
#: hours apart, so the 12 span a day and reach the phones of every time zone (back to back they span
#: minutes and train the same 247 phones every round: `fedkey simulate --plan`).
DEMO_SETTINGS = (
    'model.preset="small"',
    "simulate.rounds=12",
    "simulate.round_interval_s=7200",
    "simulate.cohort_size=200",
    "simulate.local_batch_size=4",
    "simulate.local_epochs=2",
    "simulate.optimizer.momentum=0.7",
    "simulate.eval_every=2",
    "simulate.export_bundle=false",
    "eval.max_positions=10000",
)
EPILOG = "Demo preset, on top of the embedded defaults (--set overrides it): " + "  ".join(DEMO_SETTINGS)


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder of the demo.")] = Path("runs/demo"),
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Prepared data folder; default: chitchat, prepared into data/chitchat."),
    ] = None,
    set_: SetOption = None,
    reference: Annotated[
        bool, typer.Option(help="Fit the Kneser-Ney trigram and draw its held-out recall as the report's reference.")
    ] = True,
) -> None:
    """`fedkey simulate` with the demo preset (below): chitchat (or --data), prepared into data/chitchat on
    first use; the small CIFG-LSTM; a cohort of 200 reporting phones a round; the default compression (rotate +
    4-bit); no DP. Prints the final held-out recall and writes OUT/report.html, with the Kneser-Ney
    trigram's held-out recall as reference line."""
    from fedkey.report import REFERENCE  # matplotlib: not loaded into the run's server process before the end
    from fedkey.simulate import ensure_data

    settings = [*DEMO_SETTINGS, *(set_ or [])]
    with user_errors(), run_folder_lock(out):  # held through the run (simulate_command re-enters it)
        if reference:
            cfg = effective_config(None, settings)
            data_dir = ensure_data(data, cfg)
            reference_json = json.dumps(trigram_reference(data_dir, cfg.eval.max_positions), indent=2)
            (out / REFERENCE).write_text(reference_json)
        else:
            (out / REFERENCE).unlink(missing_ok=True)
        simulate_command(out=out, data=data, config=None, set_=settings)


def trigram_reference(data_dir: Path, max_positions: int) -> dict[str, float | str]:
    """Held-out recall of the interpolated Kneser-Ney trigram on the positions the final evaluation uses."""
    from fedkey.device_sim.federated_data import FederatedData
    from fedkey.ngram_baseline import ngram_metrics

    fd = FederatedData.load(data_dir)
    console.print("fitting the Kneser-Ney trigram baseline (the report's reference line) ...")
    held_out = ngram_metrics(fd, 3, max_positions, splits=["held_out_users"])["held_out_users"]
    return {"name": "Kneser-Ney trigram"} | held_out
