"""Stage one's first half: fine-tune the teacher on the labeled rows (sequence classification) or on the corpus
texts (masked LM), on the same Trainer loop the students use."""

from __future__ import annotations

import logging
import time

import datasets
import numpy as np
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, set_seed

from pipeline.config import TeacherConfig
from pipeline.errors import PipelineError
from pipeline.mlm import MASKED_LM
from pipeline.models import load_classifier, load_masked_lm, load_tokenizer, resolve_model_path, tokenizer_fingerprint
from pipeline.trainer import LengthGroupedTrainer, TextDataset, TokenDataset, accuracy_metrics, scratch_dir, training_arguments

log = logging.getLogger(__name__)


def fine_tune_teacher(model, tokenizer, train_ds, dev_ds, args) -> list[dict]:
    """Fine-tune a sequence classifier in place; returns the Trainer's log history (loss, dev accuracy per epoch)."""
    trainer = LengthGroupedTrainer(
        model=model,
        args=args,
        train_dataset=TokenDataset(train_ds),
        eval_dataset=TokenDataset(dev_ds),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy_metrics,
        lengths=np.asarray(train_ds["length"]),
    )
    trainer.train()
    return trainer.state.log_history


def fine_tune_masked_lm(model, tokenizer, train_ds, dev_ds, args, mlm_probability: float, seed: int) -> list[dict]:
    """Fine-tune a masked-LM model in place on the corpus texts (BERT masking, drawn anew each epoch from `seed`);
    returns the log history (loss; dev masked-LM loss per epoch)."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    trainer = LengthGroupedTrainer(
        model=model,
        args=args,
        train_dataset=TextDataset(train_ds),
        eval_dataset=TextDataset(dev_ds),
        data_collator=collator,
        lengths=np.asarray(train_ds["length"]),
    )
    trainer.train()
    return trainer.state.log_history


def train_teacher(cfg: TeacherConfig, splits: dict[str, datasets.Dataset], info: dict, seed: int) -> tuple:
    """Load teacher.model with the task's head and fine-tune it (unless `cfg.epochs` is 0). Returns (model, tokenizer,
    Trainer log history, summary)."""
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    if tokenizer_fingerprint(tokenizer) != info["tokenizer_fingerprint"]:
        raise PipelineError(f"data/prepared: prepared with a different tokenizer than teacher.model '{cfg.model}'; rerun prepare")
    set_seed(seed)
    mlm = cfg.task == MASKED_LM
    if cfg.epochs > 0:
        log.info(
            "teacher: a new %s head is put on %s and trained now; transformers lists its weights as missing, as expected",
            "masked-LM" if mlm else "classification",
            cfg.model,
        )
    if mlm:
        model = load_masked_lm(resolve_model_path(cfg.model), cfg.trust_remote_code, require_head=cfg.epochs == 0)
    else:
        model = load_classifier(
            resolve_model_path(cfg.model),
            num_labels=len(info["label_names"]),
            label_names=info["label_names"],
            trust_remote_code=cfg.trust_remote_code,
            require_head=cfg.epochs == 0,
        )
    start, history = time.perf_counter(), []
    if cfg.epochs > 0:
        args = training_arguments(scratch_dir(), cfg, seed)
        history = (
            fine_tune_masked_lm(model, tokenizer, splits["train"], splits["dev"], args, cfg.mlm_probability, seed)
            if mlm
            else fine_tune_teacher(model, tokenizer, splits["train"], splits["dev"], args)
        )
    evals = [h for h in history if "eval_accuracy" in h]
    summary = {
        "seconds": round(time.perf_counter() - start, 1),
        "task": cfg.task,
        "epochs": cfg.epochs,
        "train_rows": len(splits["train"]),
        "dev_accuracy_per_epoch": [round(h["eval_accuracy"], 4) for h in evals],
    }
    if mlm:  # dev masked-LM loss (dynamic masking); the evaluate stage gives masked-token accuracy on the cached masking
        summary["dev_mlm_loss_per_epoch"] = [round(h["eval_loss"], 4) for h in history if "eval_loss" in h]
    return model, tokenizer, history, summary
