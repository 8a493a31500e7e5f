"""Stage one's first half: fine-tune the teacher on the labeled rows (sequence classification) or on the corpus
texts (masked LM), on the same Trainer loop the students use."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import datasets
import numpy as np
from transformers import DataCollatorForLanguageModeling, set_seed

from pipeline.checkpoints import Checkpoints, files_digest, save_atomically, train_work_dir, training_key
from pipeline.config import TeacherConfig
from pipeline.data import TUNE
from pipeline.errors import PipelineError
from pipeline.mlm import MASKED_LM
from pipeline.models import load_teacher, load_tokenizer, resolve_model_path, tokenizer_fingerprint
from pipeline.tasks.heads import Head, head_of
from pipeline.tasks.teacher import task_teacher
from pipeline.trainer import LengthGroupedTrainer, scratch_dir, training_arguments

log = logging.getLogger(__name__)


def fine_tune_teacher(
    model, tokenizer, splits, args, head: Head, label_names: list[str], checkpoints=None, callbacks=()
) -> list[dict]:
    """Fine-tune a sequence or token classifier in place; returns the Trainer's log history (loss, dev metrics per
    epoch). With `checkpoints`, resumes from the last one an interrupted run left."""
    args.label_names = list(head.label_keys)
    trainer = LengthGroupedTrainer(
        model=model,
        args=args,
        **task_teacher(head.name).trainer_kwargs(tokenizer, splits, label_names),
        lengths=np.asarray(splits["train"]["length"]),
        callbacks=list(callbacks),
    )
    trainer.fit(checkpoints)
    return trainer.state.log_history


def fine_tune_masked_lm(
    model, tokenizer, train_ds, dev_ds, args, mlm_probability: float, seed: int, checkpoints=None, callbacks=()
) -> list[dict]:
    """Fine-tune a masked-LM model in place on the corpus texts (BERT masking, drawn anew for every training batch
    from `seed`'s stream; the dev rows get the same masks at every evaluation); returns the log history (loss; dev
    masked-LM loss per epoch). The masking stream is checkpointed with the rest."""
    masking = ResumableMasking(DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed))
    if checkpoints is not None:
        checkpoints.extra_state = (lambda: masking.state_at(trainer.state.global_step), masking.restore)
    trainer = MaskedLMTrainer(
        model=model,
        args=args,
        **task_teacher(MASKED_LM).trainer_kwargs(tokenizer, {"train": train_ds, "dev": dev_ds}, []),
        data_collator=masking,
        lengths=np.asarray(train_ds["length"]),
        callbacks=list(callbacks),
        eval_collator=lambda: DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed),
    )
    trainer.fit(checkpoints)
    return trainer.state.log_history


class ResumableMasking:
    """The training collator's masking stream, checkpointable at a step. The dataloader collates a batch ahead of the
    step it trains, so the generator's state before each recent batch is kept; a checkpoint at step N saves the
    state after exactly N training batches."""

    KEEP = 8

    def __init__(self, collator: DataCollatorForLanguageModeling):
        self.collator, self.calls, self.before = collator, 0, {}

    def __call__(self, examples):
        generator = self.collator.generator
        self.before[self.calls] = None if generator is None else generator.get_state()
        self.before.pop(self.calls - self.KEEP, None)
        self.calls += 1
        return self.collator(examples)

    def state_at(self, batches: int) -> dict:
        """The masking state after `batches` training batches (gradient accumulation is 1 here)."""
        if batches == self.calls:
            generator = self.collator.generator
            return {"calls": batches, "generator": None if generator is None else generator.get_state()}
        return {"calls": batches, "generator": self.before[batches]}

    def restore(self, state: dict) -> None:
        self.calls, self.before = state["calls"], {}
        if state["generator"] is None:
            self.collator.generator = None  # not drawn from yet: seeded on first use
        else:
            self.collator.create_rng()  # the collator's own set-up (transformers >= 5.24 also records its process)
            self.collator.generator.set_state(state["generator"])


class MaskedLMTrainer(LengthGroupedTrainer):
    """Evaluates with a fresh collator from `eval_collator()`: every evaluation masks the dev rows alike, and the
    training masking stream is not drawn from by evaluation."""

    def __init__(self, *args, eval_collator, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator

    def evaluate(self, *args, **kwargs):
        train_collator, self.data_collator = self.data_collator, self.eval_collator()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.data_collator = train_collator


def train_teacher(
    cfg: TeacherConfig, splits: dict[str, datasets.Dataset], info: dict, seed: int, checkpoints=None, callbacks=()
) -> tuple:
    """Load teacher.model with the task's head and fine-tune it (unless `cfg.epochs` is 0), resuming from
    `checkpoints` when an interrupted run left one. Returns (model, tokenizer, Trainer log history, summary)."""
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    if tokenizer_fingerprint(tokenizer) != info["tokenizer_fingerprint"]:
        raise PipelineError(f"data/prepared: prepared with a different tokenizer than teacher.model '{cfg.model}'; rerun prepare")
    set_seed(seed)
    task = head_of(info.get("task", "sequence_classification"))
    mlm = task.name == MASKED_LM
    if cfg.epochs > 0:
        log.info(
            "teacher: a new %s head is put on %s and trained now; transformers lists its weights as missing, as expected",
            task.name,
            cfg.model,
        )
    model = load_teacher(
        task, resolve_model_path(cfg.model), info["label_names"], cfg.trust_remote_code, require_head=cfg.epochs == 0
    )
    start, history = time.perf_counter(), []
    eval_split = TUNE if TUNE in splits else "dev"  # per-epoch scores are on the tuning split; dev is kept for the record
    if cfg.epochs > 0:
        train, dev = splits["train"], splits[eval_split]
        scored = {**splits, "dev": dev}
        with scratch_dir() as scratch:
            args = training_arguments(scratch, cfg, seed, checkpoints=checkpoints)
            history = (
                fine_tune_masked_lm(model, tokenizer, train, dev, args, cfg.mlm_probability, seed, checkpoints, callbacks)
                if mlm
                else fine_tune_teacher(model, tokenizer, scored, args, task, info["label_names"], checkpoints, callbacks)
            )
    evals = [h for h in history if f"eval_{task.headline}" in h]
    summary = {
        "seconds": round(time.perf_counter() - start, 1),
        "task": task.name,
        "epochs": cfg.epochs,
        "train_rows": len(splits["train"]),
        "eval_split": eval_split,
        "eval_accuracy_per_epoch": [round(h["eval_accuracy"], 4) for h in evals if "eval_accuracy" in h],
        "resumed_from_step": checkpoints.resumed_step if checkpoints is not None else None,
    }
    if task.headline != "accuracy":
        summary[f"eval_{task.headline}_per_epoch"] = [round(h[f"eval_{task.headline}"], 4) for h in evals]
    if mlm:  # dev masked-LM loss (dynamic masking); the evaluate stage gives masked-token accuracy on the cached masking
        summary["eval_mlm_loss_per_epoch"] = [round(h["eval_loss"], 4) for h in history if "eval_loss" in h]
    return model, tokenizer, history, summary


def teacher_checkpoints(cfg: TeacherConfig, splits: dict[str, datasets.Dataset], info: dict, seed: int, out_dir: Path):
    """The teacher run's checkpoints beside `out_dir`, keyed on its settings, seed, tokenizer and prepared rows."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_steps"}
    data = files_digest(f["filename"] for name in ("train", "dev", TUNE) if name in splits for f in splits[name].cache_files)
    key = training_key(teacher=settings, task=info.get("task"), seed=seed, tokenizer=info["tokenizer_fingerprint"], data=data)
    return Checkpoints(train_work_dir(out_dir), key, cfg.checkpoint_steps, "teacher")


def run_teacher(
    cfg: TeacherConfig, splits: dict[str, datasets.Dataset], info: dict, seed: int, out_dir: Path, callbacks=()
) -> tuple[list[dict], dict]:
    """The teacher stage: train (resumably) and save model + tokenizer atomically to `out_dir`; the checkpoints are
    removed once the save succeeded. Returns (log history, summary)."""
    checkpoints = teacher_checkpoints(cfg, splits, info, seed, out_dir) if cfg.epochs > 0 else None
    model, tokenizer, history, summary = train_teacher(cfg, splits, info, seed, checkpoints, callbacks)

    def write(path: Path) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    save_atomically(out_dir, write, kept=checkpoints.work if checkpoints is not None else None)
    if checkpoints is not None:
        checkpoints.remove()
    return history, summary
