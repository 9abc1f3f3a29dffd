"""`fedkey deploy`: one run through `flwr run` against a SuperLink and phone-host SuperNodes on this machine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from fedkey.cli_common import ConfigOption, SetOption, console, effective_config, user_errors
from fedkey.run_lock import refuse_if_in_use


def deploy_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (the same outputs as fedkey simulate).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", "-d", help="Prepared data folder; default: chitchat in data/chitchat."),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    simulation: Annotated[
        bool,
        typer.Option(help="Start the SuperLink's simulation runtime (virtual SuperNodes on Ray) instead of processes."),
    ] = False,
    app_dir: Annotated[Path, typer.Option(help="The Flower app folder (holds pyproject.toml).")] = Path("."),
) -> None:
    """Deployment mode on this machine: `flower-superlink` and `simulate.phone_hosts` `flower-supernode`
    processes on loopback (insecure), then `flwr run APP_DIR`; every process is stopped at the end.
    Logs, Flower's home and the run's config go to OUT/deploy/ (docs/simulate.md)."""
    from fedkey.deploy import DeploymentError, LocalDeployment
    from fedkey.simulate import build_setup, ensure_data

    cfg = effective_config(config, set_)
    with user_errors():
        data_dir = ensure_data(data, cfg)
        build_setup(cfg, data_dir)  # refuse a configuration that cannot work before Flower starts
        refuse_if_in_use(out)  # the ServerApp takes the lock; it runs in a process of its own
    started = time.time()
    try:
        with LocalDeployment(out / "deploy", cfg, data_dir, simulation=simulation) as deployment:
            console.print(f"SuperLink on {deployment.address}; logs in {deployment.processes.log_dir}")
            deployment.run(out, app_dir=app_dir, echo=True)
    except DeploymentError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    final = out / "final.json"
    if not final.is_file() or final.stat().st_mtime < started:
        console.print(f"[red]error:[/] the run did not finish; see the logs in {out / 'deploy' / 'logs'}")
        raise typer.Exit(1)
    console.print(f"run folder: {out}")
