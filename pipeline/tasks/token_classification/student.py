"""Token classification's student facet: per-token labels and teacher logits, per-token KD."""

from __future__ import annotations

import torch

from pipeline.cache.rows import Rows
from pipeline.losses import LossMix, distillation_loss
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent
from pipeline.tasks.token_classification import IGNORE, TOKEN_LABELS, TOKEN_LOGITS, TokenClassificationConfig
from pipeline.tasks.token_classification.metrics import trainer_metrics


class TokenClassificationStudent(SequenceClassificationStudent):
    config_class = TokenClassificationConfig
    logit_field = TOKEN_LOGITS

    def cache_columns(self) -> list[str]:
        return [TOKEN_LABELS, TOKEN_LOGITS]

    def collate(self, rows: Rows, width: int) -> dict[str, torch.Tensor]:
        return {
            "labels": rows.padded(TOKEN_LABELS, width, IGNORE, torch.long)[..., 0],
            "teacher_logits": rows.padded(TOKEN_LOGITS, width, 0.0, torch.float32),
        }

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, training: bool):
        """Hard CE on the labelled sub-words + T^2 KL per token (at every real token, or at the labelled ones with
        token_positions 'labeled'), averaged over those tokens, + the hidden loss."""
        where = attention_mask.bool() if self.config.token_positions == "all" else labels != IGNORE
        return distillation_loss(
            out.logits[where], labels[where], teacher["teacher_logits"][where], hidden_pairs, attention_mask, mix
        )

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return trainer_metrics(label_names)
