"""The `fedkey` command line: one Typer app; each area registers its commands here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="fedkey",
    help="Federated next-word prediction for mobile keyboards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Areas register their sub-apps / commands below (one line each).
from fedkey.cli_foundation import (  # noqa: E402
    baseline_command,
    config_app,
    data_app,
    evaluate_command,
    train_central_command,
)

app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.command("baseline")(baseline_command)
app.command("train-central")(train_central_command)
app.command("evaluate")(evaluate_command)
from fedkey.cli_demo import EPILOG as DEMO_EPILOG, demo_command  # noqa: E402, I001

app.command("demo", epilog=DEMO_EPILOG)(demo_command)
from fedkey.cli_export import export_command  # noqa: E402

app.command("export")(export_command)
from fedkey.cli_privacy import privacy_app  # noqa: E402

app.add_typer(privacy_app, name="privacy")
from fedkey.cli_simulate import EPILOG as SIMULATE_EPILOG, simulate_command  # noqa: E402, I001

app.command("simulate", epilog=SIMULATE_EPILOG)(simulate_command)
from fedkey.cli_report import report_command  # noqa: E402

app.command("report")(report_command)
from fedkey.cli_compare import compare_command  # noqa: E402

app.command("compare")(compare_command)
from fedkey.cli_deploy import deploy_command  # noqa: E402

app.command("deploy")(deploy_command)
