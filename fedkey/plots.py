"""Plots of a run's metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: A noisy series (sampled recall, a round's mean loss) with more points than this is drawn as a moving
#: mean over a fiftieth of its points; a series of up to MARKERS_UP_TO points gets a marker on each.
SMOOTH_ABOVE = 100
MARKERS_UP_TO = 60
SMOOTHING_NOTE = (
    f"Noisy curves of more than {SMOOTH_ABOVE} points are drawn as moving means over a fiftieth of their points"
)


def moving_mean(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each window of a fiftieth of the points, at the window's last x."""
    width = max(1, len(ys) // 50)
    return xs[width - 1 :], np.convolve(ys, np.ones(width) / width, mode="valid")


def plot_series(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float | None],
    label: str | None = None,
    *,
    noisy: bool = False,
    faint_points: bool = True,
) -> None:
    """One line through the points whose y is not None (metrics logged only some steps). A ``noisy``
    series longer than :data:`SMOOTH_ABOVE` is drawn as its moving mean, with (``faint_points``) the
    points themselves faint behind it in the same colour."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if not points:
        return
    x, y = (np.asarray(v, dtype=float) for v in zip(*points, strict=True))
    if not noisy or len(y) <= SMOOTH_ABOVE:
        ax.plot(x, y, marker="o" if len(y) <= MARKERS_UP_TO else None, markersize=3, linewidth=1.2, label=label)
        return
    (line,) = ax.plot(*moving_mean(x, y), linewidth=1.2, label=label)
    if faint_points:
        ax.plot(x, y, linewidth=0.5, alpha=0.25, color=line.get_color())


def legend_below(ax: Axes) -> None:
    """The axes' legend under the plot (so it hides no line), if anything is labelled (a run stopped
    before its first evaluation has no lines)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))


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
