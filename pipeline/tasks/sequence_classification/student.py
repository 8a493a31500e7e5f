"""Sequence classification's student facet: label and teacher logits per example, Hinton KD."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.losses import LossMix, distillation_loss
from pipeline.scoring import accuracy_metrics
from pipeline.tasks import Configured


class SequenceClassificationStudent(Configured):
    """The distill stage's facet of a task: what a student reads from the cache, its batch and its logit-level loss."""

    logit_field = "logits"

    def cache_columns(self) -> list[str]:
        """The logit-level cache fields a student reads."""
        return [self.logit_field]

    def collate(self, rows: list[dict], width: int, per_token) -> dict[str, torch.Tensor]:
        """Labels and teacher targets of a padded batch; `per_token(rows, name, width, fill, dtype)` pads a token field."""
        return {
            "labels": torch.tensor([r["label"] for r in rows]),
            "teacher_logits": torch.from_numpy(np.stack([r[self.logit_field] for r in rows]).astype(np.float32)),
        }

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
