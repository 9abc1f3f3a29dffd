"""`RUN/report.html`: one self-contained HTML page describing a `fedkey simulate` run folder.

It reads what the ServerApp writes (`server/app.py`): `metrics.jsonl` and `config.toml` (required),
`participation.json` and `final.json` (absent while a run is unfinished), and `reference.json` when
present: a baseline's held-out recall (`fedkey demo` writes the Kneser-Ney trigram's), drawn as dashed
reference lines. The plots are matplotlib PNGs embedded as base64 data URIs, so the page needs no other
file: it can be mailed or opened from anywhere.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from fedkey.config import FedkeyConfig, load_config
from fedkey.plots import SMOOTH_ABOVE, SMOOTHING_NOTE, figure_png, legend_below, plot_series, read_jsonl

REPORT = "report.html"
REFERENCE = "reference.json"
RECALLS = ("recall@1", "recall@3")
DAY_S = 24 * 3600


class NotARunFolderError(FileNotFoundError):
    """The folder lacks what every `fedkey simulate` run folder holds."""


@dataclass(frozen=True)
class RunFolder:
    """The parsed contents of a run folder."""

    path: Path
    config: FedkeyConfig
    metrics: list[dict[str, Any]]
    participation: dict[str, Any] | None
    final: dict[str, Any] | None
    reference: dict[str, Any] | None

    @classmethod
    def load(cls, path: Path) -> RunFolder:
        missing = [name for name in ("metrics.jsonl", "config.toml") if not (path / name).is_file()]
        if missing:
            raise NotARunFolderError(
                f"{path} is not a `fedkey simulate` run folder (no {' or '.join(missing)}); "
                "give the --out folder of a simulate run"
            )
        metrics = read_jsonl(path / "metrics.jsonl")
        if not metrics:
            raise NotARunFolderError(f"{path / 'metrics.jsonl'} has no rounds yet: nothing to report")

        def optional(name: str) -> dict[str, Any] | None:
            return json.loads((path / name).read_text()) if (path / name).is_file() else None

        return cls(
            path=path,
            config=load_config(path / "config.toml"),
            metrics=metrics,
            participation=optional("participation.json"),
            final=optional("final.json"),
            reference=optional(REFERENCE),
        )


def write_report(run_dir: Path) -> Path:
    """Write `run_dir/report.html` from the run folder's files; returns its path."""
    run = RunFolder.load(run_dir)
    out = run_dir / REPORT
    out.write_text(render(run), encoding="utf-8")
    return out


def render(run: RunFolder) -> str:
    """The whole HTML page."""
    rows = run.metrics
    rounds = [r["round"] for r in rows]
    sections = [
        figure_html("Held-out recall vs round", _recall_png(run, rounds, "round", integer_x=True)),
        figure_html(
            "Held-out recall vs simulated time",
            _recall_png(run, [r["sim_time_s"] / 3600 for r in rows], "simulated time (h)"),
        ),
        figure_html("Held-out recall vs bytes uploaded", _uploaded_png(run)),
        figure_html(
            "Local training loss", _line_png(rounds, [r["loss"] for r in rows], "loss (nats per piece)", noisy=True)
        ),
        _privacy_section(run, rounds),
        _participation_section(run),
    ]
    status = "" if run.final else "<p class=note>Unfinished run: no final.json yet; figures show the rounds so far.</p>"
    if len(rows) > SMOOTH_ABOVE:
        status += f"<p class=note>{SMOOTHING_NOTE}, the points themselves faint behind them.</p>"
    return html_page(
        f"fedkey simulate: {run.path.resolve().name}",
        str(run.path.resolve()),
        f"{status}\n<h2>Summary</h2>\n{_table(_summary_rows(run))}\n<div class=grid>\n{''.join(sections)}</div>",
    )


def html_page(title: str, about: str, body: str) -> str:
    """A whole self-contained page: the title, a grey line (``about``, then when it was generated), ``body``."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=note>{html.escape(about)}, report generated {generated}</p>\n"
        f"{body}\n</body>\n</html>\n"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table.summary { border-collapse: collapse; margin-bottom: 1.5em; }
table.summary th, table.summary td { border-bottom: 1px solid #ddd; padding: 0.25em 1em 0.25em 0; text-align: left; }
table.summary th { font-weight: 600; white-space: nowrap; vertical-align: top; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(32em, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { max-width: 100%; } .note { color: #666; } .wide { overflow-x: auto; }
"""


def figure_html(caption: str, png: bytes) -> str:
    """A figure: the PNG embedded as a data URI, and its caption."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>\n"
    )


def _recall_png(run: RunFolder, xs: list[float], xlabel: str, integer_x: bool = False) -> bytes:
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for i, key in enumerate(RECALLS):
        plot_series(ax, xs, [r[key] for r in run.metrics], label=f"federated {key}", noisy=True)
        if run.reference is not None:
            ax.axhline(run.reference[key], linestyle="--", color=f"C{i}", label=f"{run.reference['name']} {key}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out recall (sample)")
    ax.grid(alpha=0.3)
    legend_below(ax)
    return figure_png(fig)


def byte_unit(largest: float) -> tuple[float, str]:
    """The unit (divisor, name) in which up to ``largest`` bytes read as numbers below 10,000."""
    for scale, name in ((1e12, "TB"), (1e9, "GB")):
        if largest >= 10 * scale:
            return scale, name
    return 1e6, "MB"


def bytes_text(count: float) -> str:
    scale, unit = byte_unit(count)
    return f"{count / scale:.1f} {unit}"


def cumulative_uploaded(rows: list[dict[str, Any]], scale: float) -> list[float]:
    """Bytes uploaded up to each round, in units of ``scale`` bytes."""
    return [b / scale for b in accumulate(r["bytes_up"] for r in rows)]


def _uploaded_png(run: RunFolder) -> bytes:
    scale, unit = byte_unit(sum(r["bytes_up"] for r in run.metrics))
    return _recall_png(run, cumulative_uploaded(run.metrics, scale), f"uploaded, cumulative ({unit})")


def _line_png(xs: list[float], ys: list[float | None], ylabel: str, noisy: bool = False) -> bytes:
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    plot_series(ax, xs, ys, noisy=noisy)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def _privacy_section(run: RunFolder, rounds: list[int]) -> str:
    epsilons = [r["epsilon"] for r in run.metrics]
    if all(e is None for e in epsilons):
        return (
            "<figure><h3>Privacy</h3><p>no DP: central DP is off and the pipeline adds no local noise.</p></figure>\n"
        )
    delta = next(r["delta"] for r in run.metrics if r["delta"] is not None)
    kind = "central DP-FedAvg ε" if run.config.central_dp is not None else "local DP: largest per-phone ε"
    return figure_html(f"Privacy spent: {kind} at δ = {delta:g}", _line_png(rounds, epsilons, "ε"))


def _participation_section(run: RunFolder) -> str:
    if run.participation is None:
        return "<figure><h3>Participation</h3><p>no participation.json yet.</p></figure>\n"
    counts = np.asarray(run.participation["counts"], dtype=np.int64)
    phones = int(run.participation["phones"])
    histogram = np.bincount(counts, minlength=1)
    histogram[0] = phones - len(counts)  # phones never heard from are not listed
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    ax.bar(np.arange(len(histogram)), histogram, width=0.8)
    ax.set_xlabel("accepted reports per phone")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("phones")
    ax.grid(alpha=0.3, axis="y")
    caption = f"Participation: {len(counts)} of {phones} phones reported at least once"
    return figure_html(caption, figure_png(fig))


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>\n" for k, v in rows)
    return f"<table class=summary>\n{body}</table>"


def _summary_rows(run: RunFolder) -> list[tuple[str, str]]:
    cfg, sim, rows, final = run.config, run.config.simulate, run.metrics, run.final
    rows_out: list[tuple[str, str]] = []
    if final is not None:
        held = final["held_out_users"]
        rows_out += [
            ("held-out recall@1 (final model)", f"{held['recall@1']:.4f}"),
            ("held-out recall@3 (final model)", f"{held['recall@3']:.4f}"),
            ("evaluated on", _positions_text(int(held["positions"]), cfg.eval.max_positions)),
            ("rounds", f"{final['rounds']} of {sim.rounds} (stopped by {final['stopped_by']})"),
        ]
    else:
        rows_out.append(("rounds", f"{rows[-1]['round']} of {sim.rounds} so far"))
    if run.reference is not None:
        ref = run.reference
        rows_out.append(
            (f"reference: {ref['name']}", f"recall@1 {ref['recall@1']:.4f}, recall@3 {ref['recall@3']:.4f}")
        )
    sim_s = final["sim_time_s"] if final is not None else rows[-1]["sim_time_s"]
    selected = sum(r["selected"] for r in rows)
    accepted = sum(r["reported"] - r["rejected"] for r in rows)
    epsilon = final["epsilon"] if final is not None else rows[-1]["epsilon"]
    delta = final["delta"] if final is not None else rows[-1]["delta"]
    rows_out += [
        ("simulated time", _span_text(sim_s)),
        ("wall time (rounds)", f"{rows[-1]['wall_time_s']:.0f} s"),
        ("bytes uploaded", bytes_text(sum(r["bytes_up"] for r in rows))),
        ("bytes downloaded", bytes_text(sum(r["bytes_down"] for r in rows))),
        ("accepted reports / selected phones", f"{accepted} / {selected}"),
        ("privacy (ε, δ)", "no DP" if epsilon is None else f"ε = {epsilon:.3g}, δ = {delta:g}"),
        ("model", _model_text(cfg, final)),
        ("population", f"{run.participation['phones']} phones" if run.participation else "?"),
        ("cohort", _cohort_text(cfg)),
        ("local training", _local_text(cfg)),
        ("server optimizer", _optimizer_text(cfg)),
        ("update pipeline", cfg.pipeline.describe()),
        ("central DP", _central_dp_text(cfg)),
        ("seed", str(sim.seed)),
    ]
    return rows_out


def _positions_text(positions: int, cap: int) -> str:
    if cap and positions >= cap:  # limit_positions takes the first ones, users in the data folder's order
        return f"the first {positions} word positions of the held-out users (eval.max_positions)"
    return f"{positions} word positions: all of the held-out users"


def _span_text(sim_s: float) -> str:
    text = f"{sim_s / 3600:.2f} h"
    if sim_s < DAY_S:
        text += (
            " (less than a day: phones whose eligible hours fall outside the run never train;"
            " simulate.round_interval_s paces the rounds)"
        )
    return text


def _model_text(cfg: FedkeyConfig, final: dict[str, Any] | None) -> str:
    m = cfg.model.resolved()
    params = f", {final['parameters']:,} parameters" if final is not None else ""
    return f"CIFG-LSTM preset {m.preset!r}: {m.hidden_dim} units, {m.embed_dim}-d embedding{params}"


def _cohort_text(cfg: FedkeyConfig) -> str:
    sim = cfg.simulate
    if sim.sampling == "poisson":
        return f"Poisson sampling, rate {sim.poisson_rate:g}; deadline {sim.deadline_s:g} s"
    return f"{sim.cohort_size} reports per round, over-selection {sim.over_selection:g}; deadline {sim.deadline_s:g} s"


def _local_text(cfg: FedkeyConfig) -> str:
    sim = cfg.simulate
    work = f"{sim.local_steps} steps" if sim.local_steps else f"{sim.local_epochs:g} epoch(s)"
    return (
        f"{work}, batch {sim.local_batch_size}, SGD lr {sim.local_lr:g} ({sim.local_lr_schedule}), "
        f"gradient clip {sim.local_grad_clip:g}, "
        f"≤ {sim.max_messages_per_phone or 'all'} messages per phone ({sim.message_selection}), "
        f"updates weighted by the windows {'cached' if sim.update_weight == 'cached' else 'trained'}, "
        f"engine {sim.local_engine}"
    )


def _optimizer_text(cfg: FedkeyConfig) -> str:
    opt = cfg.simulate.optimizer
    extra = {
        "fedavg": "",
        "fedavgm": f", momentum {opt.momentum:g}",
    }.get(opt.name, f", β1 {opt.beta1:g}, β2 {opt.beta2:g}, τ {opt.tau:g}")
    warmup = f", warm-up {opt.warmup_rounds} rounds" if opt.warmup_rounds else ""
    return f"{opt.name}, lr {opt.lr:g} ({opt.lr_schedule}{warmup}){extra}"


def _central_dp_text(cfg: FedkeyConfig) -> str:
    dp = cfg.central_dp
    if dp is None:
        return "off"
    budget = f", target ε {dp.target_epsilon:g}" if dp.target_epsilon is not None else ""
    return f"noise multiplier {dp.noise_multiplier:g}, clip {dp.clip_norm:g}, δ {dp.delta:g}{budget}"
