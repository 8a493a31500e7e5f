"""Masked LM's scorer facet: top-1 accuracy at the masked tokens, its calibration, and agreement with the teacher."""

from __future__ import annotations

import numpy as np

from pipeline.mlm import MLM_TARGET, SAMPLED_IDS, TOPK_INDICES, masked_token_metrics
from pipeline.scoring import predict_tokens
from pipeline.tasks.sequence_classification.scorer import SequenceClassificationScorer


def _mode(draws: np.ndarray) -> np.ndarray:
    """The most frequent of each row's sorted draws (the smallest id on a tie): the sampled teacher's top-1 estimate."""
    counts = (draws[:, :, None] == draws[:, None, :]).sum(-1)  # each draw's count among its row's
    return np.take_along_axis(draws, counts.argmax(-1)[:, None], -1)[:, 0].astype(np.int64)


class MaskedLMScorer(SequenceClassificationScorer):
    def columns(self, manifest: dict | None = None) -> list[str]:
        sampled = (manifest or {}).get("logits") == "sampled"
        return [MLM_TARGET, SAMPLED_IDS if sampled else TOPK_INDICES]

    def score(self, model, rows: list[dict], tokens: list[np.ndarray], batch_size: int, pad_id: int, cache=None) -> dict:
        """Top-1 accuracy at the masked tokens of the cached (masked) dev rows, its expected calibration error, and
        agreement with the teacher's top-1 (a sampled cache's: the most frequent draw)."""
        predicted = predict_tokens(model, tokens, batch_size, pad_id, confidence=True)
        predictions = np.concatenate([p for p, _ in predicted])
        confidence = np.concatenate([c for _, c in predicted])
        targets = np.concatenate([r[MLM_TARGET][:, 0] for r in rows])
        if rows and SAMPLED_IDS in rows[0]:
            teacher_top1 = np.concatenate([_mode(r[SAMPLED_IDS]) for r in rows])
        else:
            teacher_top1 = np.concatenate([r[TOPK_INDICES][:, 0] for r in rows]).astype(np.int64)
        return {"metric": "masked-token accuracy", **masked_token_metrics(predictions, targets, teacher_top1, confidence)}
