"""Masked LM's teacher facet: the corpus texts as token ids, masked-token accuracy per epoch."""

from __future__ import annotations

from pipeline.scoring import argmax_logits, masked_accuracy_metrics
from pipeline.tasks.sequence_classification.teacher import SequenceClassificationTeacher
from pipeline.torch_datasets import TextDataset


class MaskedLMTeacher(SequenceClassificationTeacher):
    def trainer_kwargs(self, tokenizer, splits: dict, label_names: list[str]) -> dict:
        """The corpus texts as token ids; the masking collator (checkpointable, `pipeline.teacher.ResumableMasking`)
        is added by `fine_tune_masked_lm`, which owns the resumable masking stream."""
        return {"train_dataset": TextDataset(splits["train"]), "eval_dataset": TextDataset(splits["dev"])}

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return {"compute_metrics": masked_accuracy_metrics, "preprocess_logits_for_metrics": argmax_logits}
