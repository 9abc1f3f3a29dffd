"""`fedkey export`: write a checkpoint's on-device bundle (ONNX graphs, int8 predictor, weights, lexicon, manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedkey.models.manifest import BundleError, read_lexicon


def export_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="fedkey checkpoint file (.pt) to export")],
    out: Annotated[Path, typer.Option("--out", help="bundle directory to create (see docs/artifacts.md)")],
    force: Annotated[
        bool, typer.Option("--force", help="replace OUT if it is an existing bundle or an empty directory")
    ] = False,
    reuse_graphs_from: Annotated[
        Path | None,
        typer.Option(
            "--reuse-graphs-from", help="earlier bundle: copy its training graphs if model shape and seq_len match"
        ),
    ] = None,
    lexicon: Annotated[
        Path | None,
        typer.Option(
            "--lexicon",
            help="word list for whole-word suggestions, one normalised word per line (a prepared data folder's "
            "lexicon.txt); default: the tokenizer's whole-word pieces",
        ),
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads used while exporting")] = 1,
) -> None:
    """Export CHECKPOINT as an on-device bundle: predict(.int8).onnx, train_step.onnx, local_update.onnx,
    weights.bin, tokenizer.model, lexicon.txt and manifest.json."""
    import torch  # here, not at the top: `fedkey simulate` loads this module and must stay torch-free

    from fedkey.models.bundle import export_bundle
    from fedkey.models.checkpoint import Checkpoint, CheckpointError

    torch.set_num_threads(threads)
    try:
        ckpt = Checkpoint.load(checkpoint)
        words = read_lexicon(lexicon) if lexicon is not None else None
        manifest = export_bundle(ckpt, out, overwrite=force, reuse_graphs_from=reuse_graphs_from, lexicon=words)
    except (CheckpointError, BundleError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"bundle for model version {manifest.model_version} written to {out}")
    for name, entry in manifest.files.items():
        typer.echo(f"  {name:<20} {entry.size:>10,d} bytes  sha256 {entry.sha256[:16]}")
