"""Sequence classification's student facet: label and teacher logits per example, Hinton KD."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.cache.rows import Rows
from pipeline.losses import LossMix, distillation_loss
from pipeline.scoring import accuracy_metrics
from pipeline.tasks import Configured


class SequenceClassificationStudent(Configured):
    """The distill stage's facet of a task: what a student reads from the cache, its batch and its logit-level loss."""

    logit_field = "logits"

    def check_cache(self, manifest: dict, cfg, cache_dir) -> None:
        """Refuse, with the fix, a cache whose task-specific form the student's params cannot train from."""

    def cache_columns(self) -> list[str]:
        """The logit-level cache fields a student reads."""
        return [self.logit_field]

    def collate(self, rows: Rows, width: int) -> dict[str, torch.Tensor]:
        """Labels and teacher targets of a batch padded to `width` tokens (`rows.padded` pads a token field)."""
        return {"labels": rows.stacked("label", torch.long), "teacher_logits": rows.stacked(self.logit_field, torch.float32)}

    def forward_module(self, student, training: bool):
        """The module a student runs in its forward: the whole model unless the task computes the head itself."""
        return student

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, training: bool):
        """The task's logit-level loss mixed with the hidden-state loss: (total, parts)."""
        return distillation_loss(out.logits, labels, teacher["teacher_logits"], hidden_pairs, attention_mask, mix)

    def returns_logits(self, training: bool) -> bool:
        return True

    def trainer_metrics(self, label_names: list[str]) -> dict[str, Any]:
        """compute_metrics (and preprocess_logits_for_metrics) for the Trainer's per-epoch evaluation."""
        return {"compute_metrics": accuracy_metrics}
