"""`fedkey compare`: one self-contained HTML page setting several `fedkey simulate` runs side by side.

For a fleet engineer's question "what did this change do?": the settings in which the runs differ,
a table of their figures (final held-out recall when a run has finished, the mean of its last sampled
evaluations either way, bytes, simulated and wall time, ε; `fedkey report` has each run's settings in
full) and their curves overlaid: sampled held-out
recall@1 against round, simulated time and bytes uploaded, and the local training loss. Unfinished runs
are compared on the rounds they have. Reads run folders as `fedkey.report` does.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from fedkey.config import dotted_items
from fedkey.plots import SMOOTHING_NOTE, figure_png, legend_below, plot_series
from fedkey.report import (
    RunFolder,
    byte_unit,
    bytes_text,
    cumulative_uploaded,
    figure_html,
    html_page,
)

#: evaluations averaged for the "last sampled recall@1" row: one sampled evaluation is noisy
LAST_EVALUATIONS = 5


class CompareError(ValueError):
    """The runs cannot be compared (fewer than two, the same folder twice)."""


def write_comparison(run_dirs: Sequence[Path], out: Path) -> Path:
    """Write the comparison page of ``run_dirs`` to ``out``; returns ``out``."""
    if len(run_dirs) < 2:
        raise CompareError("give at least two run folders to compare")
    resolved = [Path(d).resolve() for d in run_dirs]
    if len(set(resolved)) < len(resolved):
        raise CompareError("a run folder is given twice")
    runs = [RunFolder.load(Path(d)) for d in run_dirs]
    out.write_text(render(runs, run_labels(resolved)), encoding="utf-8")
    return out


def run_labels(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing parts of the paths that tell the runs apart (``compressed``, ``seed1/compressed``)."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def render(runs: Sequence[RunFolder], labels: Sequence[str]) -> str:
    """The whole page."""
    differ = differing_settings(runs)
    settings = (
        _table(["setting", *labels], [[key, *values] for key, values in differ.items()])
        if differ
        else "<p>The runs have the same settings.</p>"
    )
    figures = [
        figure_html("Sampled held-out recall@1 vs round", _curves(runs, labels, _by_round, "recall@1", "round")),
        figure_html(
            "Sampled held-out recall@1 vs simulated time",
            _curves(runs, labels, _by_sim_hours, "recall@1", "simulated time (h)"),
        ),
        _uploaded_figure(runs, labels),
        figure_html("Local training loss vs round", _curves(runs, labels, _by_round, "loss", "round")),
    ]
    body = (
        f"<h2>Settings that differ</h2>\n{settings}\n"
        f"<h2>Figures</h2>\n{_table(['', *labels], figures_rows(runs))}\n"
        f"<p class=note>{SMOOTHING_NOTE}; the sampled recall is each run's periodic evaluation on a sample "
        "of the held-out users (simulate.eval_users, simulate.eval_positions), the final figures its full "
        "evaluation.</p>\n"
        f"<div class=grid>\n{''.join(figures)}</div>"
    )
    return html_page(f"fedkey compare: {len(runs)} runs", ", ".join(str(r.path.resolve()) for r in runs), body)


def differing_settings(runs: Sequence[RunFolder]) -> dict[str, list[str]]:
    """Dotted setting -> its value in each run ("-": unset), for the settings whose values are not all equal."""
    flat = [dotted_items(run.config.model_dump(mode="json", exclude={"pipeline"})) for run in runs]
    flat = [f | {"pipeline": run.config.pipeline.describe()} for f, run in zip(flat, runs, strict=True)]
    keys = sorted(set().union(*flat))
    differ = [key for key in keys if len({repr(f.get(key)) for f in flat}) > 1]
    return {key: ["-" if f.get(key) is None else str(f[key]) for f in flat] for key in differ}


def figures_rows(runs: Sequence[RunFolder]) -> list[list[str]]:
    """One row per figure, one cell per run."""

    def final(key: str) -> list[str]:
        return [f"{run.final['held_out_users'][key]:.4f}" if run.final else "-" for run in runs]

    def last_sampled(run: RunFolder) -> str:
        values = [r["recall@1"] for r in run.metrics if r["recall@1"] is not None][-LAST_EVALUATIONS:]
        return f"{np.mean(values):.4f} ({len(values)} evaluations)" if values else "-"

    def status(run: RunFolder) -> str:
        if run.final:
            return f"finished: {run.final['rounds']} rounds (stopped by {run.final['stopped_by']})"
        return f"unfinished: {run.metrics[-1]['round']} of {run.config.simulate.rounds} rounds"

    def epsilon(run: RunFolder) -> str:
        value = run.final["epsilon"] if run.final else run.metrics[-1]["epsilon"]
        return "no DP" if value is None else f"{value:.3g}"

    return [
        ["status", *(status(run) for run in runs)],
        ["held-out recall@1 (final model)", *final("recall@1")],
        ["held-out recall@3 (final model)", *final("recall@3")],
        [f"sampled recall@1, last {LAST_EVALUATIONS} evaluations", *(last_sampled(run) for run in runs)],
        ["bytes uploaded", *(bytes_text(sum(r["bytes_up"] for r in run.metrics)) for run in runs)],
        ["bytes downloaded", *(bytes_text(sum(r["bytes_down"] for r in run.metrics)) for run in runs)],
        ["simulated time", *(f"{run.metrics[-1]['sim_time_s'] / 3600:.2f} h" for run in runs)],
        ["wall time (rounds)", *(f"{run.metrics[-1]['wall_time_s']:.0f} s" for run in runs)],
        ["ε", *(epsilon(run) for run in runs)],
    ]


def _by_round(rows: list[dict[str, Any]]) -> list[float]:
    return [r["round"] for r in rows]


def _by_sim_hours(rows: list[dict[str, Any]]) -> list[float]:
    return [r["sim_time_s"] / 3600 for r in rows]


def _uploaded_figure(runs: Sequence[RunFolder], labels: Sequence[str]) -> str:
    scale, unit = byte_unit(max(sum(r["bytes_up"] for r in run.metrics) for run in runs))

    def uploaded(rows: list[dict[str, Any]]) -> list[float]:
        return cumulative_uploaded(rows, scale)

    png = _curves(runs, labels, uploaded, "recall@1", f"uploaded, cumulative ({unit})")
    return figure_html("Sampled held-out recall@1 vs bytes uploaded", png)


def _curves(
    runs: Sequence[RunFolder],
    labels: Sequence[str],
    x_of: Callable[[list[dict[str, Any]]], list[float]],
    key: str,
    xlabel: str,
) -> bytes:
    fig, ax = plt.subplots(figsize=(5.6, 3.5))
    for run, label in zip(runs, labels, strict=True):
        # overlaid runs: their moving means only, the points of several runs would hide each other
        plot_series(ax, x_of(run.metrics), [r[key] for r in run.metrics], label, noisy=True, faint_points=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel({"loss": "loss (nats per piece)"}.get(key, f"held-out {key} (sample)"))
    ax.grid(alpha=0.3)
    legend_below(ax)
    return figure_png(fig)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr><th>{html.escape(row[0])}</th>{''.join(f'<td>{html.escape(c)}</td>' for c in row[1:])}</tr>\n"
        for row in rows
    )
    return f"<div class=wide><table class=summary>\n<tr>{head}</tr>\n{body}</table></div>"
