"""CLI commands for the foundation: config, data preparation, baselines, central training, evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedkey.cli_common import ConfigOption, SetOption, console, effective_config, user_errors
from fedkey.config import load_run_config, to_toml
from fedkey.run_lock import run_folder_lock

config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Turn a corpus into per-user federated data.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the effective configuration (defaults <- --config file <- --set overrides) as TOML."""
    typer.echo(to_toml(effective_config(config, set_)))


@data_app.command("prepare")
def data_prepare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the prepared data into.")],
    corpus: Annotated[
        str | None, typer.Option(help="chitchat | shakespeare | jsonl:PATH (overrides data.corpus).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Clean, cap and split a corpus into train/held-out users; train the tokenizer; write stats.json."""
    from fedkey.data import prepare_from_config

    cfg = effective_config(config, set_, lambda: [f'data.corpus="{corpus}"'] if corpus else [])
    d = cfg.data
    with user_errors():
        data = prepare_from_config(cfg, out)
    s = data.stats
    table = Table(title=f"{d.corpus} -> {out}")
    for col in ("split", "users", "messages", "words", "median msgs/user"):
        table.add_column(col)
    for split in ("train", "test"):
        row = s[split]
        table.add_row(
            split,
            str(row["users"]),
            str(row["messages"]),
            str(row["words"]),
            str(row["messages_per_user"].get("p50", 0)),
        )
    console.print(table)
    console.print(
        f"vocabulary {s['vocab_size']} pieces, lexicon {s['lexicon_size']} words, "
        f"held-out OOV rate {s['test_oov_rate']:.3f}"
    )


def _load_data(path: Path):
    from fedkey.device_sim.federated_data import FederatedData

    with user_errors():
        return FederatedData.load(path)


DataOption = Annotated[Path, typer.Option("--data", "-d", help="Prepared data folder (fedkey data prepare).")]


def baseline_command(
    data: DataOption,
    order: Annotated[int, typer.Option(help="n-gram order: 2 = bigram, 3 = trigram.")] = 3,
    max_positions: Annotated[int, typer.Option(help="Evaluate at most this many word positions (0 = all).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the metrics as JSON here.")] = None,
) -> None:
    """Interpolated Kneser-Ney n-gram baseline: recall@1/@3 and perplexity on held-out and personal text."""
    from fedkey.ngram_baseline import ngram_metrics

    fd = _load_data(data)
    result = {"model": f"kneser-ney-{order}gram"} | ngram_metrics(fd, order, max_positions)
    typer.echo(json.dumps(result, indent=2))
    if out:
        out.write_text(json.dumps(result, indent=2))


def train_central_command(
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (metrics, checkpoints, plot).")],
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue from OUT/checkpoint.pt if present, with OUT/config.toml's settings unless --config is "
            "given (--set still applies)."
        ),
    ] = False,
) -> None:
    """Train the centralised baseline on all training users' text pooled (Gboard's server-trained model)."""
    from fedkey.central import train_central

    with user_errors():
        cfg = load_run_config(out, config, resume, set_ or [])
    fd = _load_data(data)
    with user_errors(), run_folder_lock(out):
        final = train_central(cfg, fd, out, resume=resume)
    _print_final(final)
    console.print(f"run folder: {out}  (metrics.jsonl, metrics.png, best.pt, final.json)")


def evaluate_command(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint (.pt).")],
    data: DataOption,
    max_positions: Annotated[int, typer.Option(help="Evaluate at most this many word positions (0 = all).")] = 0,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Recall@1/@3 and perplexity of a checkpoint on held-out users and on the personal split."""
    from fedkey.models.checkpoint import Checkpoint
    from fedkey.models.evaluate import evaluate_model

    cfg = effective_config(config, set_)
    fd = _load_data(data)
    with user_errors():
        ckpt = Checkpoint.load(checkpoint)
    kwargs = {"max_positions": max_positions, "beam": cfg.eval.beam, "max_word_pieces": cfg.eval.max_word_pieces}
    final = {
        "held_out_users": evaluate_model(
            ckpt.model, fd.tokenizer, fd.lexicon, [m for u in fd.test_users for m in u.messages], **kwargs
        ),
        "personal": evaluate_model(
            ckpt.model, fd.tokenizer, fd.lexicon, [m for u in fd.train_users for m in u.personal], **kwargs
        ),
    }
    _print_final(final)
    typer.echo(json.dumps(final, indent=2))


def _print_final(final: dict) -> None:
    table = Table(title="keyboard metrics")
    for col in ("text", "recall@1", "recall@3", "perplexity (piece)", "word positions"):
        table.add_column(col)
    for name in ("held_out_users", "personal"):
        m = final[name]
        table.add_row(
            name, f"{m['recall@1']:.4f}", f"{m['recall@3']:.4f}", f"{m['perplexity']:.1f}", str(m["positions"])
        )
    console.print(table)
