"""The privacy report: every mechanism, its parameters, per-report / per-device / central ε, with δ.

`build_report` returns plain data (written as JSON); `render_markdown` turns it into the page a
privacy team reads. All ε values come from the accountants in this package (dp-accounting underneath).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from fedkey.privacy.accountant import epsilon_of, noise_multiplier_for, rounds_allowed
from fedkey.privacy.calibration import LocalMechanism, classic_gaussian_sigma, gaussian_delta
from fedkey.privacy.config import CentralDpConfig, LocalAccountingConfig
from fedkey.privacy.ledger import epsilon_of_reports
from fedkey.privacy.shuffle import (
    compose_epsilon_delta,
    gaussian_shuffle_epsilon,
    shuffle_epsilon,
    shuffle_epsilon_closed_form,
)


def local_section(mech: LocalMechanism, clip_norm: float, cfg: LocalAccountingConfig) -> dict[str, Any]:
    """Per-report calibration, per-device composition and (optionally) shuffled ε of a local report."""
    section: dict[str, Any] = {
        "mechanism": mech.mechanism,
        "clip_norm": clip_norm,
        "sensitivity": mech.sensitivity,
        "scale": mech.scale,
        "noise_multiplier": mech.noise_multiplier,
        "epsilon_per_report": mech.epsilon,
        "delta_per_report": mech.delta,
        "per_device": [],
    }
    if mech.mechanism == "gaussian":
        section["calibration"] = {
            "method": "analytic Gaussian mechanism (Balle & Wang 2018, Thm 8)",
            "sigma": mech.scale,
            "delta_at_sigma": gaussian_delta(mech.scale, mech.epsilon, mech.sensitivity),
            "classic_sigma": classic_gaussian_sigma(mech.epsilon, mech.delta, mech.sensitivity),
            "classic_valid": mech.epsilon < 1.0,
        }
    else:
        section["calibration"] = {"method": "Laplace mechanism, b = Δ₁/ε", "scale": mech.scale}
    for n in cfg.participations:
        eps = epsilon_of_reports(Counter({(mech.mechanism, mech.noise_multiplier): n}), cfg.delta, cfg.accountant)
        section["per_device"].append({"participations": n, "epsilon": eps, "delta": cfg.delta})
    if cfg.reports_per_round is not None:
        section["shuffled"] = shuffle_section(mech, cfg, section["per_device"])
    return section


def shuffle_section(
    mech: LocalMechanism, cfg: LocalAccountingConfig, per_device: list[dict[str, Any]]
) -> dict[str, Any]:
    """Central-equivalent ε of shuffled reports: one round, and over N rounds (advanced composition).

    Shuffling is post-processing of the local reports, so the local ε is always a valid bound too;
    each row states the smaller one and which bound gave it ("shuffle" or "local").
    """
    n = cfg.reports_per_round
    assert n is not None
    out: dict[str, Any] = {
        "reports_per_round": n,
        "delta": cfg.delta,
        "method": "Feldman, McMillan & Talwar 2021 numerical clone bound; advanced composition over rounds",
        "over_participations": [],
    }

    def one_round(delta: float) -> float:
        if mech.mechanism == "gaussian":
            return gaussian_shuffle_epsilon(mech.noise_multiplier, n, delta)[0]
        return shuffle_epsilon(mech.epsilon, n, delta)

    if mech.mechanism == "laplace":
        out["closed_form_epsilon_per_round"] = shuffle_epsilon_closed_form(mech.epsilon, n, cfg.delta)
    for k, local in zip(cfg.participations, per_device, strict=True):
        if k == 1:
            eps_shuffle = one_round(cfg.delta)
        else:
            # Split δ: half over the k rounds' own δ, half as the advanced-composition slack.
            eps_r = one_round(cfg.delta / (2 * k))
            eps_shuffle, _ = compose_epsilon_delta(eps_r, cfg.delta / (2 * k), k, cfg.delta / 2)
        best = min(eps_shuffle, local["epsilon"])
        out["over_participations"].append(
            {
                "participations": k,
                "epsilon": best,
                "delta": cfg.delta,
                "shuffle_bound": eps_shuffle,
                "bound": "shuffle" if eps_shuffle <= local["epsilon"] else "local",
            }
        )
    return out


def central_section(cfg: CentralDpConfig) -> dict[str, Any]:
    """Central DP-FedAvg ε(δ) over the planned rounds, and the inverse questions when a budget is set."""
    spec = cfg.round_spec()
    section: dict[str, Any] = {
        "mechanism": "Gaussian on the sum of clipped updates (DP-FedAvg)",
        "noise_multiplier": cfg.noise_multiplier,
        "clip_norm": cfg.clip_norm,
        "noise_std_on_sum": cfg.noise_multiplier * cfg.clip_norm,
        "sampling": cfg.sampling,
        "sampling_rate": cfg.sampling_rate,
        "cohort_size": cfg.cohort_size,
        "population": cfg.population,
        "rounds": cfg.rounds,
        "accountant": cfg.accountant,
        "delta": cfg.delta,
        "epsilon": epsilon_of([(spec, cfg.rounds)], cfg.delta, cfg.accountant),
        "target_epsilon": cfg.target_epsilon,
    }
    if cfg.target_epsilon is not None:
        section["rounds_allowed_by_budget"] = rounds_allowed(spec, cfg.target_epsilon, cfg.delta, cfg.accountant)
        section["noise_multiplier_for_target"] = noise_multiplier_for(
            cfg.target_epsilon,
            cfg.delta,
            cfg.rounds,
            cfg.sampling,
            cfg.sampling_rate,
            cfg.cohort_size,
            cfg.population,
            cfg.accountant,
        )
    return section


def build_report(
    central: CentralDpConfig | None,
    local: LocalMechanism | None = None,
    local_clip_norm: float | None = None,
    local_accounting: LocalAccountingConfig | None = None,
    pipeline: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The full report. Top-level `epsilon`/`delta` are the central ones when central DP is configured,
    else the per-device local ε after the largest participation count."""
    report: dict[str, Any] = {"pipeline": pipeline or [], "local_dp": None, "central_dp": None}
    if local is not None:
        assert local_clip_norm is not None
        report["local_dp"] = local_section(local, local_clip_norm, local_accounting or LocalAccountingConfig())
    if central is not None:
        report["central_dp"] = central_section(central)
        report["epsilon"], report["delta"] = report["central_dp"]["epsilon"], central.delta
    elif report["local_dp"] is not None:
        last = report["local_dp"]["per_device"][-1]
        report["epsilon"], report["delta"] = last["epsilon"], last["delta"]
    else:
        report["epsilon"], report["delta"] = math.inf, None
        report["warning"] = "no DP mechanism configured: updates are not differentially private"
    return report


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page."""
    lines = ["# Privacy report", ""]
    if report.get("warning"):
        lines += [f"**Warning:** {report['warning']}", ""]
    lines += [f"Headline: **ε = {_fmt(report['epsilon'])} at δ = {_fmt(report['delta'])}**", ""]
    if report["pipeline"]:
        lines += ["## Update pipeline (device order)", ""]
        lines += [f"{i + 1}. `{s}`" for i, s in enumerate(report["pipeline"])] + [""]
    local = report["local_dp"]
    if local is not None:
        lines += [
            "## Local DP (each report, on the phone)",
            "",
            f"- mechanism: {local['mechanism']}, clip norm C = {_fmt(local['clip_norm'])}, "
            f"sensitivity Δ = {_fmt(local['sensitivity'])} (any two clipped deltas)",
            f"- per report: ε = {_fmt(local['epsilon_per_report'])}, δ = {_fmt(local['delta_per_report'])}",
            f"- noise scale = {_fmt(local['scale'])} (noise multiplier {_fmt(local['noise_multiplier'])})",
        ]
        cal = local["calibration"]
        if local["mechanism"] == "gaussian":
            lines.append(
                f"- calibration: {cal['method']}: σ = {_fmt(cal['sigma'])} gives δ(ε) = "
                f"{_fmt(cal['delta_at_sigma'])}; the classic bound would need "
                f"σ = {_fmt(cal['classic_sigma'])}" + ("" if cal["classic_valid"] else " (and is not valid for ε ≥ 1)")
            )
        lines += ["", "| reports by one phone | ε | δ |", "|---:|---:|---:|"]
        lines += [f"| {r['participations']} | {_fmt(r['epsilon'])} | {_fmt(r['delta'])} |" for r in local["per_device"]]
        lines.append("")
        shuf = local.get("shuffled")
        if shuf:
            lines += [
                f"Shuffled with {shuf['reports_per_round']} reports per round ({shuf['method']}); "
                "ε is the smaller of the shuffle bound and the local bound:",
                "",
                "| rounds one phone reports in | ε | δ | shuffle bound | bound used |",
                "|---:|---:|---:|---:|---|",
            ]
            lines += [
                f"| {r['participations']} | {_fmt(r['epsilon'])} | {_fmt(r['delta'])} | "
                f"{_fmt(r['shuffle_bound'])} | {r['bound']} |"
                for r in shuf["over_participations"]
            ]
            lines.append("")
    central = report["central_dp"]
    if central is not None:
        sampling = (
            f"Poisson, q = {_fmt(central['sampling_rate'])}"
            if central["sampling"] == "poisson"
            else f"fixed size {central['cohort_size']} of {central['population']} (without replacement)"
        )
        lines += [
            "## Central DP (DP-FedAvg, on the server)",
            "",
            f"- {central['mechanism']}: noise multiplier z = {_fmt(central['noise_multiplier'])}, "
            f"clip C = {_fmt(central['clip_norm'])}, "
            f"noise std on the sum = {_fmt(central['noise_std_on_sum'])}",
            f"- sampling: {sampling}; accountant: {central['accountant']} (dp-accounting)",
            f"- after {central['rounds']} rounds: **ε = {_fmt(central['epsilon'])} at δ = {_fmt(central['delta'])}**",
        ]
        if central.get("target_epsilon") is not None:
            z = _fmt(central["noise_multiplier"])
            lines += [
                f"- budget ε = {_fmt(central['target_epsilon'])}: "
                f"allows {central['rounds_allowed_by_budget']} rounds at z = {z}; "
                f"{central['rounds']} rounds need "
                f"z ≥ {_fmt(central['noise_multiplier_for_target'])}",
            ]
        lines.append("")
    return "\n".join(lines)
