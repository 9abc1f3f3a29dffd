"""The centralised baseline: all training users' text pooled on a server (Gboard's "server-trained").

Writes into the run folder: `config.toml` (effective), `metrics.jsonl` (one line per evaluation),
`checkpoint.pt` (latest, atomic) and `best.pt` (best held-out recall@1 so far), `metrics.png`, and
`final.json` with held-out-user and personal-split metrics of the best checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedkey.config import FedkeyConfig, to_toml
from fedkey.device_sim.federated_data import FederatedData, sample_messages
from fedkey.models.checkpoint import Checkpoint
from fedkey.models.cifg_lstm import CifgLstm
from fedkey.models.evaluate import evaluate_model
from fedkey.models.schedules import lr_factor
from fedkey.models.sequences import SequenceBatch, length_bucketed_batches, message_sequences
from fedkey.plots import plot_metrics


def _trimmed(batch: SequenceBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut the batch to its longest row: buckets of short messages then cost short steps."""
    t = int(batch.lengths.max())
    inputs, targets, mask = (torch.from_numpy(a[:, :t]).to(device) for a in (batch.inputs, batch.targets, batch.mask))
    return inputs, targets, mask


def training_device(name: str) -> torch.device:
    """The torch device for `central.device`, refusing cuda when no GPU is visible."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("central.device = 'cuda' but torch sees no GPU; use central.device = 'cpu'")
    return torch.device(name)


def train_central(
    config: FedkeyConfig, data: FederatedData, out: Path, *, eval_positions: int = 3000, resume: bool = False
) -> dict[str, dict[str, float]]:
    """Train on pooled training-user text; returns final held-out and personal metrics."""
    cc = config.central
    torch.set_num_threads(cc.threads)
    torch.manual_seed(cc.seed)
    device = training_device(cc.device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(to_toml(config))
    model_config = config.model.model_copy(update={"vocab_size": data.tokenizer.vocab_size})

    train_text = [m for u in data.train_users for m in u.messages]
    seqs = message_sequences(data.tokenizer, train_text, cc.seq_len)
    eval_text = sample_messages(data.test_users, cc.eval_users, cc.seed)

    step, best = 0, -1.0
    if resume and (out / "checkpoint.pt").is_file():
        ckpt = Checkpoint.load(out / "checkpoint.pt")
        model, step, best = ckpt.model, int(ckpt.meta["step"]), float(ckpt.meta["best_recall1"])
    else:
        model = CifgLstm(model_config, seed=cc.seed)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cc.lr)
    if resume and (out / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(out / "optimizer.pt", map_location=device, weights_only=True))

    rng = np.random.default_rng(cc.seed + step)
    steps_per_epoch = -(-len(seqs) // cc.batch_size)
    total_steps = int(cc.epochs * steps_per_epoch)
    deadline = time.monotonic() + cc.max_minutes * 60 if cc.max_minutes else float("inf")
    started = time.monotonic()
    tokens_seen = 0

    def evaluate_and_save() -> None:
        nonlocal best
        metrics = evaluate_model(
            model,
            data.tokenizer,
            data.lexicon,
            eval_text,
            max_positions=eval_positions,
            beam=config.eval.beam,
            max_word_pieces=config.eval.max_word_pieces,
        )
        record = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "wall_s": time.monotonic() - started,
            "train_tokens_per_s": tokens_seen / max(time.monotonic() - started, 1e-9),
        } | metrics
        with (out / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        improved = metrics["recall@1"] > best
        best = max(best, metrics["recall@1"])
        meta = {"step": step, "best_recall1": best, "kind": "central"}
        ckpt = Checkpoint(model, data.tokenizer, cc.seq_len, model_version=step, meta=meta)
        ckpt.save(out / "checkpoint.pt")
        torch.save(optimizer.state_dict(), out / "optimizer.pt")
        if improved:
            ckpt.save(out / "best.pt")
        plot_metrics(out / "metrics.jsonl", out / "metrics.png", x="step")
        summary = (
            f"recall@1 {metrics['recall@1']:.3f} recall@3 {metrics['recall@3']:.3f} ppl {metrics['perplexity']:.1f}"
        )
        progress.update(task, description=summary)
        progress.console.print(f"step {step} (epoch {record['epoch']:.2f}): {summary}")

    columns = (
        TextColumn("[bold]central[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("training", total=total_steps, completed=step)
        while step < total_steps and time.monotonic() < deadline:
            for index in length_bucketed_batches(seqs.lengths, cc.batch_size, rng):
                inputs, targets, mask = _trimmed(seqs.take(index), device)
                loss_sum, count = model.loss(inputs, targets, mask, cc.dropout)
                for group in optimizer.param_groups:
                    group["lr"] = cc.lr * lr_factor(cc.lr_schedule, step, total_steps)
                optimizer.zero_grad(set_to_none=True)
                (loss_sum / count).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cc.clip_norm)
                optimizer.step()
                step += 1
                tokens_seen += int(count)
                progress.update(task, advance=1)
                if step % cc.eval_every == 0:
                    evaluate_and_save()
                if step >= total_steps or time.monotonic() >= deadline:
                    break
        evaluate_and_save()

    final_model = Checkpoint.load(out / "best.pt").model.to(device)
    ev = config.eval
    kwargs = {"max_positions": ev.max_positions, "beam": ev.beam, "max_word_pieces": ev.max_word_pieces}
    final = {
        "held_out_users": evaluate_model(
            final_model, data.tokenizer, data.lexicon, [m for u in data.test_users for m in u.messages], **kwargs
        ),
        "personal": evaluate_model(
            final_model, data.tokenizer, data.lexicon, [m for u in data.train_users for m in u.personal], **kwargs
        ),
        "steps": step,
        "parameters": model_config.num_parameters(),
    }
    (out / "final.json").write_text(json.dumps(final, indent=2))
    return final
