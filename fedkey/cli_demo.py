"""`fedkey demo`: the main job on the embedded default data, end to end, in a few minutes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedkey.cli_common import console, effective_config, user_errors


def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the demo's outputs.")] = Path("runs/demo"),
    data: Annotated[Path, typer.Option(help="Prepared-data cache (created from chitchat if absent).")] = Path(
        "data/chitchat"
    ),
    minutes: Annotated[float, typer.Option(help="Training time budget in minutes.")] = 4.0,
) -> None:
    """Prepare chitchat, fit the trigram baseline, train the small CIFG-LSTM briefly, compare them."""
    from fedkey.central import train_central
    from fedkey.data import prepare_from_config
    from fedkey.device_sim.federated_data import FederatedData
    from fedkey.models.metrics import limit_positions, recall_at_k
    from fedkey.models.ngram import KneserNey

    cfg = effective_config(
        None,
        ['model.preset="small"', f"central.max_minutes={minutes}", "central.epochs=50", "eval.max_positions=20000"],
    )
    with user_errors():
        if not (data / "prepare.json").is_file():
            console.print(f"preparing chitchat into {data} ...")
            prepare_from_config(cfg, data, corpus="chitchat")
        fd = FederatedData.load(data)
    console.print(f"{len(fd.train_users)} training users (phones), {len(fd.test_users)} held-out users")
    held_out = [m for u in fd.test_users for m in u.messages]
    trigram = KneserNey((m for u in fd.train_users for m in u.messages), fd.lexicon, order=3)
    tri = recall_at_k(trigram, limit_positions(held_out, 20000), set(fd.lexicon)).as_dict()
    final = train_central(cfg, fd, out)
    lstm = final["held_out_users"]
    summary = {"trigram": tri, "cifg_lstm_small": lstm}
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    console.print(f"held-out users, {int(lstm['positions'])} word positions:")
    console.print(f"  Kneser-Ney trigram   recall@1 {tri['recall@1']:.3f}  recall@3 {tri['recall@3']:.3f}")
    console.print(
        f"  CIFG-LSTM (small)    recall@1 {lstm['recall@1']:.3f}  recall@3 {lstm['recall@3']:.3f}"
        f"  perplexity {lstm['perplexity']:.1f} per piece"
    )
    console.print(f"outputs in {out}: metrics.jsonl, metrics.png, best.pt, final.json, demo.json")
