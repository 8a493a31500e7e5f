"""Sequence classification's teacher facet: labelled rows padded per batch, accuracy and macro-F1 per epoch."""

from __future__ import annotations

from pipeline.scoring import accuracy_metrics
from pipeline.torch_datasets import TokenDataset


class SequenceClassificationTeacher:
    """The teacher stage's facet of a task: the Trainer arguments that differ by task."""

    def trainer_kwargs(self, tokenizer, splits: dict, label_names: list[str]) -> dict:
        """Datasets, collator and per-epoch metrics of fine-tuning the teacher."""
        from transformers import DataCollatorWithPadding

        return {
            "train_dataset": TokenDataset(splits["train"]),
            "eval_dataset": TokenDataset(splits["dev"]),
            "data_collator": DataCollatorWithPadding(tokenizer),
            **self.trainer_metrics(label_names),
        }

    def trainer_metrics(self, label_names: list[str]) -> dict:
        """compute_metrics (and preprocess_logits_for_metrics) for the Trainer's per-epoch dev evaluation."""
        return {"compute_metrics": accuracy_metrics}
