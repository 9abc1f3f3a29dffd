"""Plots of a run's metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_series(ax: Axes, xs: Sequence[float], ys: Sequence[float | None], label: str | None = None) -> None:
    """One line with markers through the points whose y is not None (metrics logged only some steps)."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)


def plot_metrics(
    metrics_path: Path, out: Path, x: str = "step", series: tuple[str, ...] = ("recall@1", "recall@3", "perplexity")
) -> None:
    """One panel per series against `x`, written as a PNG."""
    rows = read_jsonl(metrics_path)
    if not rows:
        return
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2))
    for ax, key in zip(axes, series, strict=True):
        plot_series(ax, [r[x] for r in rows], [r.get(key) for r in rows])
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes, cropped to what is drawn (legends outside the axes included); closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
