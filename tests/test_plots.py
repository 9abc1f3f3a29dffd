"""fedkey.plots.plot_series: noisy series longer than SMOOTH_ABOVE become moving means, short ones stay as points."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fedkey.plots import MARKERS_UP_TO, SMOOTH_ABOVE, moving_mean, plot_series


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_a_long_noisy_series_is_its_moving_mean_over_its_faint_points(ax):
    n = 5 * SMOOTH_ABOVE
    xs = list(range(1, n + 1))
    ys = [float(i % 7) for i in range(n)]  # period 7: a window of 10 averages to about 3
    plot_series(ax, xs, ys, "loss", noisy=True)
    mean, points = ax.get_lines()
    width = n // 50
    assert len(mean.get_xdata()) == n - width + 1 and mean.get_xdata()[0] == width
    np.testing.assert_allclose(mean.get_ydata()[0], np.mean(ys[:width]))
    assert np.ptp(mean.get_ydata()) < np.ptp(ys) / 4  # smoothed
    assert list(points.get_ydata()) == ys and points.get_alpha() == 0.25
    assert points.get_color() == mean.get_color() and mean.get_label() == "loss"


def test_overlaid_runs_draw_the_mean_alone_and_none_values_are_skipped(ax):
    ys = [None if i % 3 == 0 else float(i) for i in range(3 * SMOOTH_ABOVE)]
    plot_series(ax, range(len(ys)), ys, noisy=True, faint_points=False)
    (mean,) = ax.get_lines()
    kept = np.array([y for y in ys if y is not None])
    np.testing.assert_allclose(mean.get_ydata(), moving_mean(np.arange(len(kept)), kept)[1])


@pytest.mark.parametrize("noisy", [False, True])
def test_short_or_not_noisy_series_keep_every_point(ax, noisy: bool):
    plot_series(ax, range(MARKERS_UP_TO), [1.0] * MARKERS_UP_TO, noisy=noisy)
    plot_series(ax, range(2 * SMOOTH_ABOVE), [2.0] * (2 * SMOOTH_ABOVE))  # ε: monotone, never smoothed
    short, long = ax.get_lines()
    assert len(short.get_xdata()) == MARKERS_UP_TO and short.get_marker() == "o"
    assert len(long.get_xdata()) == 2 * SMOOTH_ABOVE and long.get_marker() in (None, "None", "")
