"""The teacher's training loop, transformers' Trainer: arguments built from the teacher section, length-grouped
batches, and the log history as CSV (the teacher's and the students', whose loop is pipeline.student_loop)."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments

from pipeline.batching import EpochLengthGroupedSampler
from pipeline.checkpoints import Checkpoints
from pipeline.config import TeacherConfig


class LengthGroupedTrainer(Trainer):
    """A Trainer whose training batches group examples of similar length (padding is per batch), given the lengths,
    in an order that is a function of (seed, epoch): a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, *args, lengths: np.ndarray, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = [int(n) for n in lengths]

    def _get_train_sampler(self, train_dataset=None):
        return EpochLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, self.lengths, self.args.seed
        )

    def fit(self, checkpoints: Checkpoints | None = None) -> None:
        """train(), resuming from the last complete checkpoint of `checkpoints` when an earlier run left one."""
        if checkpoints is None:
            self.train()
            return
        self.add_callback(checkpoints.callback())
        self.train(resume_from_checkpoint=checkpoints.latest())


def training_arguments(
    output_dir: Path | str, cfg: TeacherConfig, seed: int, eval_each_epoch: bool = True, checkpoints: Checkpoints | None = None
) -> TrainingArguments:
    """Trainer arguments from the teacher section: warm-up then linear decay, clipping at 1.0, a log every 10 steps.
    With `checkpoints` the Trainer saves resumable checkpoints into its work dir every `checkpoints.every` steps (its
    callback adds one at each epoch end); otherwise `output_dir` is scratch and nothing is saved (stages save with
    save_pretrained)."""
    gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(checkpoints.work if checkpoints is not None else output_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 64),
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        # on a GPU: bf16 autocast and the fused AdamW kernel; the CPU keeps fp32 and the plain AdamW (same figures)
        optim="adamw_torch_fused" if gpu else "adamw_torch",
        bf16=gpu and torch.cuda.is_bf16_supported(),
        max_grad_norm=1.0,
        seed=seed,
        data_seed=seed,
        logging_steps=10,
        save_strategy="steps" if checkpoints is not None and checkpoints.every else "no",
        save_steps=checkpoints.every if checkpoints is not None and checkpoints.every else 500,
        eval_strategy="epoch" if eval_each_epoch else "no",
        report_to="none",
        use_cpu=not gpu,
        dataloader_pin_memory=gpu,
        label_names=["labels"],
        # progress bars only on a terminal: under DVC, carriage-return updates would fill the logs
        disable_tqdm=not sys.stderr.isatty(),
        remove_unused_columns=False,
    )


def write_history_csv(history: list[dict], path: Path) -> None:
    """Trainer log history -> one CSV row per log step (DVC plots read it)."""
    rows = [h for h in history if "loss" in h or "eval_accuracy" in h or "eval_f1" in h]
    keys = ["step", "epoch"] + sorted({k for h in rows for k in h} - {"step", "epoch"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def scratch_dir():
    """Trainer needs an output_dir; stages save through save_pretrained, so it is scratch, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="kd-trainer-") as scratch:
        yield scratch


def write_training_record(result: dict, name: str, plots_root: Path, metrics_root: Path) -> None:
    """A student stage's records: its loss history as <plots_root>/<name>.csv, its summary as train_<name>.json."""
    write_history_csv(result["history"], Path(plots_root) / f"{name}.csv")
    metrics = Path(metrics_root) / f"train_{name}.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(result["summary"], indent=2) + "\n")
