"""Masked LM's scorer facet: top-1 accuracy at the masked tokens and agreement with the teacher's top-1."""

from __future__ import annotations

import numpy as np

from pipeline.mlm import MLM_TARGET, TOPK_INDICES, masked_token_metrics
from pipeline.scoring import predict_tokens
from pipeline.tasks.sequence_classification.scorer import SequenceClassificationScorer


class MaskedLMScorer(SequenceClassificationScorer):
    def columns(self) -> list[str]:
        return [MLM_TARGET, TOPK_INDICES]

    def score(self, model, rows: list[dict], tokens: list[np.ndarray], batch_size: int, pad_id: int, cache=None) -> dict:
        """Top-1 accuracy at the masked tokens of the cached (masked) dev rows, and agreement with the teacher's top-1."""
        predictions = np.concatenate(predict_tokens(model, tokens, batch_size, pad_id))
        targets = np.concatenate([r[MLM_TARGET][:, 0] for r in rows])
        teacher_top1 = np.concatenate([r[TOPK_INDICES][:, 0] for r in rows]).astype(np.int64)
        return {"metric": "masked-token accuracy", **masked_token_metrics(predictions, targets, teacher_top1)}
