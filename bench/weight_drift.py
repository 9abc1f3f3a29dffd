"""Where two federated runs' final models differ: how far each parameter moved from the shared start.

Two runs of `bench/fed_quality.py` (compressed and dense updates) start from the same seeded weights and
see the same phones. This compares their final checkpoints parameter by parameter, as the distance
‖w − w₀‖ each moved from the initial weights, and the tied embedding and the output bias row by row,
with the pieces grouped by how often they occur in the training text (bands of frequency rank). A
compression that loses the same part of every update round after round shows as a model that moved
differently in the parameters or pieces that part belongs to; noise that averages out does not.

    .venv/bin/python bench/weight_drift.py --run runs/fed-quality-c25-r1320/compressed
        --against runs/fed-quality-c25-r1320/uncompressed [--central-run runs/central-default]
        [--data data/chitchat] [--quick] [--write]

`--quick` counts piece frequencies on the first 100 training users instead of all. `--write` replaces
the docs/results.md section "## Federated quality: where compressed and dense models differ (issue 5)".
Last line: ``RESULT embedding_ratio=… out_bias_ratio=… recurrent_ratio=… top_band_ratio=… mid_band_ratio=…
rare_band_ratio=…`` (each: the run's distance moved over the other run's).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from fed_quality import shown, write_section

from fedkey.config import load_config
from fedkey.device_sim.federated_data import FederatedData
from fedkey.models.checkpoint_file import CheckpointFile
from fedkey.models.cifg_lstm import initial_weights
from fedkey.models.manifest import param_layout, unflatten_weights

ROOT = Path(__file__).resolve().parents[1]
TITLE = "## Federated quality: where compressed and dense models differ (issue 5)"
#: frequency-rank bands of the pieces (most frequent first); the last one ends at the vocabulary size
BANDS = (0, 100, 500, 1000, 2000, 4000)
RECURRENT = ("w_x", "w_h", "b", "w_proj")
Params = dict[str, np.ndarray]


def final_params(run: Path) -> tuple[Params, Params]:
    """(final parameters, initial parameters) of a finished run."""
    config = load_config(run / "config.toml")
    final = CheckpointFile.load(run / "checkpoint.pt")
    layout = param_layout(final.model_config.resolved())
    start = unflatten_weights(initial_weights(final.model_config, config.simulate.seed), layout)
    return final.params, start


def piece_counts(data: FederatedData, vocab: int, users: int | None) -> np.ndarray:
    """Occurrences of each piece id in the training users' messages (the first ``users`` users, or all)."""
    messages = [m for u in data.train_users[:users] for m in u.messages]
    ids = np.fromiter((i for piece_ids in data.tokenizer.encode_batch(messages) for i in piece_ids), np.int64)
    return np.bincount(ids, minlength=vocab)


def band_rows(counts: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, piece ids) per frequency-rank band."""
    order = np.argsort(-counts, kind="stable")
    edges = [*BANDS, len(counts)]
    return [(f"{lo + 1}–{hi}", order[lo:hi]) for lo, hi in itertools.pairwise(edges)]


def moved(params: Params, start: Params, name: str, rows: np.ndarray | None = None) -> float:
    """Distance a parameter (or some of its rows) moved: ‖w − w₀‖, per row on average when rows are given."""
    diff = params[name] - start[name]
    if rows is None:
        return float(np.linalg.norm(diff))
    return float(np.linalg.norm(diff[rows].reshape(len(rows), -1), axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "fed-quality" / "compressed")
    parser.add_argument("--against", type=Path, default=ROOT / "runs" / "fed-quality" / "uncompressed")
    parser.add_argument("--central-run", type=Path, default=None, help="also show its output bias per band")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chitchat")
    parser.add_argument("--quick", action="store_true", help="piece counts of the first 100 training users")
    parser.add_argument("--write", action="store_true", help="update the section in docs/results.md")
    args = parser.parse_args()

    (a, a0), (b, b0) = final_params(args.run), final_params(args.against)
    for name in a:
        if not np.array_equal(a0[name], b0[name]):
            raise SystemExit(f"the two runs did not start from the same weights ({name} differs): use runs of one seed")
    vocab = a["embedding"].shape[0]
    counts = piece_counts(FederatedData.load(args.data), vocab, 100 if args.quick else None)
    central = CheckpointFile.load(args.central_run / "best.pt").params if args.central_run else None
    na, nb = args.run.name, args.against.name

    lines = [
        TITLE,
        "",
        "`bench/weight_drift.py` compares the final checkpoints of two federated runs that started from the",
        f"same seeded weights ({shown(args.run)} and {shown(args.against)}): how far each parameter moved",
        "from the initial weights, ‖w − w₀‖, and for the tied embedding the mean distance its rows moved,",
        "with the pieces grouped by their frequency rank in the training text (the share of training",
        "pieces each band holds alongside). The output bias per band is its mean value, not a distance.",
        "",
        f"| parameter | {na} moved | {nb} moved | {na} / {nb} |",
        "|---|---|---|---|",
    ]
    ratios: dict[str, float] = {}
    for name in a:
        ma, mb = moved(a, a0, name), moved(b, b0, name)
        ratios[name] = ma / mb
        lines.append(f"| {name} | {ma:.2f} | {mb:.2f} | {ma / mb:.3f} |")
    recurrent = float(
        np.sqrt(sum(moved(a, a0, n) ** 2 for n in RECURRENT) / sum(moved(b, b0, n) ** 2 for n in RECURRENT))
    )
    central_head = " central out_bias |" if central else ""
    lines += [
        "",
        f"| pieces by frequency rank | share of training pieces | embedding row moved, {na} | {nb} | {na} / {nb} "
        f"| out_bias, {na} | {nb} |{central_head}",
        "|---|---|---|---|---|---|---|" + ("---|" if central else ""),
    ]
    band_ratio = []
    for label, rows in band_rows(counts):
        ma, mb = moved(a, a0, "embedding", rows), moved(b, b0, "embedding", rows)
        band_ratio.append(ma / mb)
        cells = [
            label,
            f"{counts[rows].sum() / counts.sum():.1%}",
            f"{ma:.3f}",
            f"{mb:.3f}",
            f"{ma / mb:.3f}",
            f"{a['out_bias'][rows].mean():+.2f}",
            f"{b['out_bias'][rows].mean():+.2f}",
        ]
        if central:
            cells.append(f"{central['out_bias'][rows].mean():+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    command = (
        f"python bench/weight_drift.py --run {shown(args.run)} --against {shown(args.against)} "
        + (f"--central-run {shown(args.central_run)} " if args.central_run else "")
        + "--write"
    )
    lines += ["", "Command:", "", f"    {command}", ""]
    text = "\n".join(lines)
    print(text)
    if args.write and not args.quick:
        write_section(text)
    print(
        f"RESULT embedding_ratio={ratios['embedding']:.3f} out_bias_ratio={ratios['out_bias']:.3f} "
        f"recurrent_ratio={recurrent:.3f} top_band_ratio={band_ratio[0]:.3f} "
        f"mid_band_ratio={band_ratio[2]:.3f} rare_band_ratio={band_ratio[-1]:.3f}"
    )


if __name__ == "__main__":
    main()
