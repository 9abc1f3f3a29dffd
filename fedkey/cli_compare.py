"""`fedkey compare RUN RUN ...`: several `fedkey simulate` runs side by side in one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedkey.cli_common import console, user_errors


def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders of `fedkey simulate` (their --out).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The page to write.")] = Path("compare.html"),
) -> None:
    """Write one page comparing runs: the settings that differ, final and recent held-out recall, bytes,
    simulated and wall time, ε, and their recall and loss curves overlaid (against round, simulated time
    and bytes uploaded). Unfinished runs are compared on the rounds they have."""
    from fedkey.compare import write_comparison

    with user_errors():
        path = write_comparison(runs, out)
    console.print(f"comparison: {path}")
