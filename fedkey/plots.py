"""Plots of a run's metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(
    metrics_path: Path, out: Path, x: str = "step", series: tuple[str, ...] = ("recall@1", "recall@3", "perplexity")
) -> None:
    """One panel per series against `x`, written as a PNG."""
    rows = read_jsonl(metrics_path)
    if not rows:
        return
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2))
    for ax, key in zip(axes, series, strict=True):
        points = [(r[x], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3)
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
