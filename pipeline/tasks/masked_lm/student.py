"""Masked LM's student facet: masked targets and the teacher's top-k, the vocabulary head run only where a loss reads it."""

from __future__ import annotations

import torch

from pipeline.cache.rows import Rows
from pipeline.losses import LossMix, masked_lm_distillation_loss
from pipeline.mlm import IGNORE, MLM_TARGET, TOPK_INDICES, TOPK_VALUES
from pipeline.scoring import argmax_logits, masked_accuracy_metrics
from pipeline.tasks.masked_lm import MaskedLMConfig
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent


class MaskedLMStudent(SequenceClassificationStudent):
    config_class = MaskedLMConfig

    def cache_columns(self) -> list[str]:
        return [MLM_TARGET, TOPK_VALUES, TOPK_INDICES]

    def collate(self, rows: Rows, width: int) -> dict[str, torch.Tensor]:
        return {
            "labels": rows.padded(MLM_TARGET, width, IGNORE, torch.long)[..., 0],
            "teacher_topk_values": rows.padded(TOPK_VALUES, width, 0.0, torch.float32),
            "teacher_topk_indices": rows.padded(TOPK_INDICES, width, 0, torch.long),
        }

    def forward_module(self, student, training: bool):
        # in training the vocabulary head runs only where a loss reads it (see loss)
        return student.base_model if training else student

    def returns_logits(self, training: bool) -> bool:
        return not training

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, training: bool):
        """Masked-LM losses at the tokens they read: the masked ones (CE; and the top-k KL with mlm_positions
        'masked') or every real token (KL with 'all'). In training the vocabulary head runs on those tokens only — at
        15% masking that skips most of the (tokens x vocabulary) projection, the bulk of a small student's step;
        otherwise (evaluation) the full logits are there and are indexed."""
        masked = labels != IGNORE
        kl_where = masked if self.config.mlm_positions == "masked" else attention_mask.bool()
        need = masked | kl_where
        logits = student.cls(out.last_hidden_state[need]) if training else out.logits[need]
        return masked_lm_distillation_loss(
            logits,
            labels[need],
            teacher["teacher_topk_values"][need],
            teacher["teacher_topk_indices"][need],
            kl_where[need],
            hidden_pairs,
            attention_mask,
            mix,
        )

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return {"compute_metrics": masked_accuracy_metrics, "preprocess_logits_for_metrics": argmax_logits}
