"""`fedkey privacy ...`: privacy accounting from a config file or as a what-if calculator from flags.

    fedkey privacy account --config run.toml --out reports/
    fedkey privacy account --noise-multiplier 1.1 --sampling-rate 0.004 --rounds 1000 --delta 1e-5 \
        --sampling poisson --json
    fedkey privacy account --target-epsilon 3 --sampling-rate 0.004 --rounds 1000 --delta 1e-5 --json

The config file may be the whole project config: only `[[pipeline]]`, `[central_dp]` and
`[local_accounting]` are read (see fedkey.protocol.pipeline_config and fedkey.privacy.config); flags
override the file.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from fedkey.privacy.config import CentralDpConfig, LocalAccountingConfig
from fedkey.privacy.errors import PrivacyError
from fedkey.protocol.pipeline_config import PipelineConfig

privacy_app = typer.Typer(
    help="Differential privacy: ε accounting for local and central DP, reports, what-if questions.",
    no_args_is_help=True,
)

REPORT_NAME = "privacy_report"


def _default_dim() -> int:
    from fedkey.models.model_config import ModelConfig

    return ModelConfig(preset="default").num_parameters()


def _load(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise typer.BadParameter(f"cannot read {path}: {err}", param_hint="--config") from err


def _central(section: dict[str, Any], overrides: dict[str, Any]) -> CentralDpConfig | None:
    """Merge file and flags; with a target ε and no noise multiplier, solve for the multiplier first."""
    merged = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    if not merged:
        return None
    if "noise_multiplier" not in merged and "target_epsilon" in merged:
        # dp-accounting and scipy (~45 MB, 1 s) load here, not with the module: `fedkey simulate` loads
        # this module with the CLI, and its process is the federated server's, which needs them only with DP
        from fedkey.privacy.accountant import noise_multiplier_for

        probe = CentralDpConfig(**{**merged, "noise_multiplier": 1.0})
        merged["noise_multiplier"] = noise_multiplier_for(
            probe.target_epsilon or 0.0,
            probe.delta,
            probe.rounds,
            probe.sampling,
            probe.sampling_rate,
            probe.cohort_size,
            probe.population,
            probe.accountant,
        )
    return CentralDpConfig(**merged)


def _pipeline(
    stages: list[dict[str, Any]] | None,
    mechanism: str | None,
    epsilon: float | None,
    delta: float | None,
    clip_norm: float | None,
) -> PipelineConfig | None:
    if mechanism is not None or epsilon is not None:
        if stages:
            raise typer.BadParameter("give local DP either in the config's [[pipeline]] or as flags, not both")
        if epsilon is None:
            raise typer.BadParameter("--local-epsilon is required for a local DP what-if", param_hint="--local-epsilon")
        noise: dict[str, Any] = {"kind": f"{mechanism or 'gaussian'}_noise", "epsilon": epsilon}
        if noise["kind"] == "gaussian_noise":
            noise["delta"] = delta if delta is not None else 1e-8
        stages = [{"kind": "clip", "norm": clip_norm or 1.0}, noise]
    return PipelineConfig.model_validate(stages) if stages else None


ACCOUNT_HELP = (
    "Print (and optionally write) the privacy report: every mechanism and its parameters, per-report ε, "
    "per-device ε after N reports, shuffled ε and central ε over the rounds, each with its δ; with "
    "--target-epsilon also the noise multiplier the budget needs and the rounds it allows."
)


@privacy_app.command("account", help=ACCOUNT_HELP)
def account(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file: its pipeline stage list, central_dp and local_accounting tables"),
    ] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="central DP: noise std / clip norm")] = None,
    sampling_rate: Annotated[float | None, typer.Option(help="central DP, Poisson: per-phone probability q")] = None,
    sampling: Annotated[str | None, typer.Option(help="central DP: poisson | fixed")] = None,
    cohort_size: Annotated[int | None, typer.Option(help="central DP, fixed: phones per round")] = None,
    population: Annotated[int | None, typer.Option(help="central DP, fixed: eligible phones")] = None,
    rounds: Annotated[int | None, typer.Option(help="central DP: planned rounds")] = None,
    delta: Annotated[float | None, typer.Option(help="central DP: δ")] = None,
    clip_norm: Annotated[float | None, typer.Option(help="clip norm C (central and local what-if)")] = None,
    target_epsilon: Annotated[
        float | None,
        typer.Option(help="central budget: report the noise multiplier it needs and the rounds it allows"),
    ] = None,
    accountant: Annotated[str | None, typer.Option(help="pld (tight) | rdp (fast)")] = None,
    local_mechanism: Annotated[str | None, typer.Option(help="local what-if: gaussian | laplace")] = None,
    local_epsilon: Annotated[float | None, typer.Option(help="local what-if: ε per report")] = None,
    local_delta: Annotated[float | None, typer.Option(help="local what-if: δ per report (Gaussian)")] = None,
    participations: Annotated[
        str | None, typer.Option(help="local: comma-separated report counts per phone, e.g. 1,10,100")
    ] = None,
    reports_per_round: Annotated[
        int | None, typer.Option(help="local: reports shuffled together per round (shuffle amplification)")
    ] = None,
    dim: Annotated[
        int | None, typer.Option(help="model dimension (Laplace with an L2 clip); default: the default model")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    out: Annotated[Path | None, typer.Option(help=f"directory to write {REPORT_NAME}.json and .md")] = None,
) -> None:
    """The privacy report from a config and/or flags (see ACCOUNT_HELP)."""
    data = _load(config)
    try:
        central = _central(
            data.get("central_dp", {}),
            {
                "noise_multiplier": noise_multiplier,
                "sampling_rate": sampling_rate,
                "sampling": sampling,
                "cohort_size": cohort_size,
                "population": population,
                "rounds": rounds,
                "delta": delta,
                "clip_norm": clip_norm,
                "target_epsilon": target_epsilon,
                "accountant": accountant,
            },
        )
        pipeline = _pipeline(data.get("pipeline"), local_mechanism, local_epsilon, local_delta, clip_norm)
        local_cfg = dict(data.get("local_accounting", {}))
        if participations is not None:
            local_cfg["participations"] = [int(p) for p in participations.split(",") if p.strip()]
        if reports_per_round is not None:
            local_cfg["reports_per_round"] = reports_per_round
        local_accounting = LocalAccountingConfig(**local_cfg)
        if central is None and pipeline is None:
            raise typer.BadParameter("nothing to account: give --config or central/local DP flags")
        model_dim = dim or _default_dim()
        mech = pipeline.local_mechanism(model_dim) if pipeline else None
        clip = pipeline.clip() if pipeline else None
        from fedkey.privacy.report import build_report, render_markdown  # dp-accounting: see _central

        report = build_report(
            central,
            mech,
            clip.norm if clip else None,
            local_accounting,
            [s.model_dump(exclude_none=True) for s in pipeline.root] if pipeline else [],
        )
    except (ValidationError, PrivacyError, ValueError) as err:
        if isinstance(err, typer.BadParameter):
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    text = json.dumps(report, indent=2)
    markdown = render_markdown(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{REPORT_NAME}.json").write_text(text + "\n")
        (out / f"{REPORT_NAME}.md").write_text(markdown)
    typer.echo(text if as_json else markdown)
