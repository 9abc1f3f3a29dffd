"""Options and error handling shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedkey.config import ConfigError, FedkeyConfig, load_config
from fedkey.run_lock import RunFolderBusyError

console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file; anything not in it takes the embedded default."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting, e.g. --set central.epochs=2 (repeatable)."),
]


def effective_config(
    config: Path | None, overrides: list[str] | None, extra: Callable[[], list[str]] | None = None
) -> FedkeyConfig:
    """Config file + --set overrides + overrides implied by a command's own flags."""
    with user_errors():
        return load_config(config, [*(overrides or []), *(extra() if extra else [])])


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected input errors (bad config, corpus, checkpoint, bundle, a run folder in use) into one
    red line and exit 2."""
    try:
        yield
    except (ConfigError, ValueError, FileNotFoundError, RunFolderBusyError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
