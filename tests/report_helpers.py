"""Helpers for the report tests: a short real run in-process, and rendering a page in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from simulate_helpers import LocalGrid, tiny_config

from fedkey.server.app import SimulationRun
from fedkey.simulate import RunSettings, build_setup

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make install installs it)")

# Records, after load, what a reader would see: every image decoded, the summary tables' rows.
CHECK_SCRIPT = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.check = JSON.stringify({
    images: images.length,
    decoded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    rows: document.querySelectorAll("table.summary tr").length,
  });
});
</script>"""


def simulate_in_process(prepared, out: Path, *overrides: str) -> Path:
    """A short real run (ServerApp loop + phone-host ClientApp) through the in-process grid (no Ray)."""
    config = tiny_config(*overrides)
    run = SimulationRun(RunSettings(config, prepared.root, out, False, False), build_setup(config, prepared.root))
    run.prepare_outputs()
    run.run(LocalGrid())
    return out


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def assert_renders(report: Path, tmp_path: Path, images: int, rows: int = 15) -> None:
    """Open the page from file:// in headless Chromium: images decode, the tables' rows are there, pixels drawn."""
    page = report.read_text(encoding="utf-8")
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert "<link" not in page and "<script" not in page  # nothing to fetch: the file stands alone
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", checked.as_uri(), profile=tmp_path / "p1").stdout
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, dom[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert (check["images"], check["decoded"]) == (images, images)
    assert check["rows"] >= rows

    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,2400", f"--screenshot={shot}", report.as_uri(), profile=tmp_path / "p2")
    pixels = imread(shot)[..., :3]
    assert (pixels.min(axis=2) < 0.9).mean() > 0.02  # not blank: text and plots drawn
    blue = np.array([31, 119, 180]) / 255  # matplotlib's first line colour: the plots are painted
    assert (np.abs(pixels - blue).max(axis=2) < 0.05).sum() > 200
