"""`fedkey report RUN`: (re)write RUN/report.html for a `fedkey simulate` run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedkey.cli_common import console, user_errors


def report_command(
    run: Annotated[Path, typer.Argument(help="Run folder of `fedkey simulate` (its --out).")],
) -> None:
    """Write RUN/report.html: recall vs round, simulated time and bytes uploaded; loss; ε; participation;
    a summary table. One self-contained file (plots embedded) to open in any browser or mail."""
    from fedkey.report import write_report

    with user_errors():
        path = write_report(run)
    console.print(f"report: {path}")
