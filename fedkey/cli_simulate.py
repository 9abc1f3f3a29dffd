"""`fedkey simulate`: federated training over a simulated phone fleet, in-process on Flower's engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel

from fedkey.cli_common import ConfigOption, SetOption, console, user_errors
from fedkey.config import SimulateConfig, load_run_config, to_toml
from fedkey.run_lock import run_folder_lock

if TYPE_CHECKING:
    from fedkey.simulate import SimulationSetup


def settings_help(section: str, model: type[BaseModel]) -> list[str]:
    """One line per setting of a config section (nested sections expanded), from the field descriptions."""
    lines = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += settings_help(f"{section}.{name}", annotation)
            continue
        default = field.get_default(call_default_factory=True)
        lines.append(f"  {section}.{name} = {default!r}: {field.description or ''}")
    return lines


EPILOG = "\n\n".join(
    [
        "Settings (--set KEY=VALUE, or in the --config TOML):",
        *settings_help("simulate", SimulateConfig),
        "  \\[population]: the phone fleet (see fedkey config show and docs/devices.md)",
        "  \\[\\[pipeline]]: update pipeline stages (clip, top_k, random_k, rotate, quantize, gaussian_noise, ...)",
        "  \\[central_dp]: central DP-FedAvg (noise_multiplier, clip_norm, delta, target_epsilon, accountant)",
        "Outputs and examples: docs/simulate.md.",
    ]
)


def simulate_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Run folder: metrics.jsonl, config.toml, checkpoint.pt, participation.json, final.json, bundle/, "
            "report.html.",
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            "-d",
            help="Prepared data folder (fedkey data prepare); default: chitchat, prepared into "
            "data/chitchat on first use.",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue after OUT/checkpoint.pt (config from OUT/config.toml unless --config is given); the "
            "result equals an uninterrupted run."
        ),
    ] = False,
    rounds: Annotated[int | None, typer.Option(help="Rounds to run (simulate.rounds).", min=1)] = None,
    cohort: Annotated[
        int | None, typer.Option(help="Reports per round, the goal count (simulate.cohort_size).", min=1)
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
    plan: Annotated[
        bool,
        typer.Option(
            help="Train nothing and write nothing: replay the run's selection and reporting (the same draws) "
            "and print who would report: the simulated span, reports per round, phones that never report "
            "and their share of the text."
        ),
    ] = False,
) -> None:
    """Federated training of the keyboard model over a simulated phone fleet: a Flower ServerApp with
    sampling, over-selection, deadlines and per-phone update decoding; phone hosts (virtual SuperNodes)
    each training many phones."""
    from fedkey.report import REPORT
    from fedkey.server.stopping import RunInterrupted
    from fedkey.simulate import build_setup, ensure_data, run_local

    def flags() -> list[str]:
        extra = []
        if rounds is not None:
            extra.append(f"simulate.rounds={rounds}")
        if cohort is not None:
            extra.append(f"simulate.cohort_size={cohort}")
        return extra

    with user_errors():
        cfg = load_run_config(out, config, resume, [*(set_ or []), *flags()])
    with user_errors():
        data_dir = ensure_data(data, cfg)
        setup = build_setup(cfg, data_dir)  # refuse a configuration that cannot work before Flower starts
    if plan:
        print_plan(setup)
        return
    run_config = {
        "config-file": str(out / "config.toml"),
        "data-dir": str(data_dir),
        "out": str(out),
        "resume": resume,
        "progress": True,
    }
    try:
        with user_errors(), run_folder_lock(out):
            (out / "config.toml").write_text(to_toml(cfg))
            run_local(run_config, verbose=verbose)
    except RunInterrupted as stop:
        if stop.resumable_after:
            console.print(
                f"[yellow]stopped[/] after round {stop.resumable_after}: continue with "
                f"fedkey simulate --out {out} --resume{f' --data {data}' if data else ''}"
            )
        else:
            console.print("[yellow]stopped[/] before the first round ended: nothing to resume")
        raise typer.Exit(128 + stop.signal) from None  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    final = json.loads((out / "final.json").read_text())
    held = final["held_out_users"]
    console.print(
        f"{final['rounds']} rounds (stopped by {final['stopped_by']}), simulated "
        f"{final['sim_time_s'] / 3600:.2f} h: held-out recall@1 {held['recall@1']:.4f}, "
        f"recall@3 {held['recall@3']:.4f}"
    )
    console.print(
        f"run folder: {out}  (metrics.jsonl, config.toml, checkpoint.pt, participation.json, "
        f"final.json{', bundle/' if cfg.simulate.export_bundle else ''}, report.html)"
    )
    console.print(f"report: {out / REPORT}")


def print_plan(setup: SimulationSetup) -> None:
    """The schedule's reach (fedkey.coverage), as `fedkey simulate --plan` prints it."""
    from fedkey.coverage import schedule_coverage

    c = schedule_coverage(setup)
    sim = setup.config.simulate
    phones = len(c.reports)
    console.print(
        f"{c.rounds} rounds span {c.span_s / 3600:.1f} simulated hours "
        f"(simulate.round_interval_s = {sim.round_interval_s:g} s); {c.reports_per_round:.1f} reports per round "
        f"({int(c.per_round.min())}-{int(c.per_round.max())})"
    )
    console.print(
        f"{phones - c.phones_never} of {phones} phones report at least once, {int(c.reports.max())} times at most; "
        f"the {c.phones_never} that never report hold {c.text_never:.1%} of the training text"
    )
