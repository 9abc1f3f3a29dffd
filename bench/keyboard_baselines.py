"""Keyboard metrics of the n-gram baselines and the centralised CIFG-LSTM on one corpus, side by side.

    python bench/keyboard_baselines.py --corpus chitchat --central-run runs/central-default --write
    python bench/keyboard_baselines.py --quick          # small: 5,000 positions, a 1-minute small LSTM

Measures Kneser-Ney bigram and trigram on the held-out users (and the personal split) of a prepared
folder, and reads the LSTM's figures from a `fedkey train-central` run (`final.json`, measured on the
same split by the same metric code). `--write` replaces this corpus's table in docs/results.md.
Last line: RESULT corpus=... bigram_r1=... trigram_r1=... lstm_r1=... lstm_over_trigram_r1=...
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from fedkey.config import CentralConfig, load_config
from fedkey.device_sim.federated_data import FederatedData, prepare
from fedkey.ngram_baseline import ngram_metrics

ROOT = Path(__file__).resolve().parent.parent


def quick_lstm(data: FederatedData, max_positions: int) -> tuple[dict, str]:
    from fedkey.central import train_central

    cfg = load_config(
        None,
        [
            'model.preset="small"',
            "central.max_minutes=1",
            "central.epochs=50",
            f"eval.max_positions={max_positions}",
            "central.threads=1",
        ],
    )
    run = Path(tempfile.mkdtemp(prefix="fedkey-bench-"))
    return train_central(cfg, data, run), "small, 1 minute"


def table(corpus: str, rows: list[tuple[str, dict]], commands: list[str]) -> str:
    lines = [
        f"### {corpus}",
        "",
        "Commands:",
        "",
        "```",
        *commands,
        "```",
        "",
        "| model | held-out recall@1 | recall@3 | perplexity | personal recall@1 | recall@3 |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        h, p = m["held_out_users"], m["personal"]
        ppl = (
            f"{h['word_perplexity']:.1f} / word"
            if "perplexity" not in h
            else f"{h['perplexity']:.1f} / piece, {h['word_perplexity']:.1f} / word"
        )
        lines.append(
            f"| {name} | {h['recall@1']:.4f} | {h['recall@3']:.4f} | {ppl} | "
            f"{p['recall@1']:.4f} | {p['recall@3']:.4f} |"
        )
    h = rows[0][1]["held_out_users"]
    lines += [
        "",
        f"{int(h['positions'])} held-out word positions; out-of-lexicon rate {h['oov_rate']:.3f} "
        "(always a miss). n-gram perplexity scores out-of-lexicon words as one <unk> token, so it "
        "is lower-bounded differently from the LSTM's word perplexity (total piece NLL / words).",
    ]
    return "\n".join(lines) + "\n"


def write_section(corpus: str, text: str) -> None:
    path = ROOT / "docs" / "results.md"
    doc = path.read_text() if path.exists() else "# Results\n"
    begin, end = f"<!-- baselines:{corpus}:begin -->", f"<!-- baselines:{corpus}:end -->"
    block = f"{begin}\n{text}{end}"
    if begin in doc:
        doc = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def central_flags(central: CentralConfig) -> str:
    """The `--set` flags that turn the default central settings into these."""
    defaults = CentralConfig().model_dump()
    changed = {key: value for key, value in central.model_dump().items() if value != defaults[key]}
    return " ".join(f"--set central.{key}={json.dumps(value)}" for key, value in changed.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="chitchat")
    parser.add_argument("--data", type=Path, help="prepared folder (default data/CORPUS; prepared if absent)")
    parser.add_argument("--central-run", type=Path, help="a train-central run folder holding final.json")
    parser.add_argument("--max-positions", type=int, default=0, help="word positions evaluated (0 = all)")
    parser.add_argument("--quick", action="store_true", help="5,000 positions; a 1-minute small LSTM if no run")
    parser.add_argument("--write", action="store_true", help="update this corpus's table in docs/results.md")
    args = parser.parse_args()

    data_dir = args.data or ROOT / "data" / args.corpus
    if not (data_dir / "prepare.json").is_file():
        prepare(args.corpus, data_dir)
    data = FederatedData.load(data_dir)
    positions = 5000 if args.quick else args.max_positions
    rows = [
        ("Kneser-Ney bigram", ngram_metrics(data, 2, positions)),
        ("Kneser-Ney trigram", ngram_metrics(data, 3, positions)),
    ]
    commands = [f"fedkey data prepare --corpus {args.corpus} --out data/{args.corpus}"]
    if args.central_run:
        final = json.loads((args.central_run / "final.json").read_text())
        cfg = load_config(args.central_run / "config.toml")
        label = (
            f"CIFG-LSTM {cfg.model.preset} ({final['parameters']:,} params, {final['steps']} steps on "
            f"{cfg.central.device})"
        )
        commands.append(
            f"fedkey train-central --data data/{args.corpus} --out {args.central_run} {central_flags(cfg.central)}"
        )
    else:
        final, how = quick_lstm(data, positions)
        label = f"CIFG-LSTM ({how})"
    rows.append((label, final))
    commands.append(
        "python bench/keyboard_baselines.py --corpus {} {}--write".format(
            args.corpus, f"--central-run {args.central_run} " if args.central_run else ""
        )
    )
    text = table(args.corpus, rows, commands)
    print(text)
    if args.write:
        write_section(args.corpus, text)
    r1 = [m["held_out_users"]["recall@1"] for _, m in rows]
    print(
        f"RESULT corpus={args.corpus} bigram_r1={r1[0]:.4f} trigram_r1={r1[1]:.4f} lstm_r1={r1[2]:.4f} "
        f"lstm_over_trigram_r1={r1[2] / r1[1]:.3f}"
    )


if __name__ == "__main__":
    main()
