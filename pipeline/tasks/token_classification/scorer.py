"""Token classification's scorer facet: entity F1 (strict IOB2) of a saved model on cached rows."""

from __future__ import annotations

import numpy as np

from pipeline.scoring import predict_tokens
from pipeline.tasks.sequence_classification.scorer import SequenceClassificationScorer
from pipeline.tasks.token_classification import TOKEN_LABELS
from pipeline.tasks.token_classification.metrics import entity_metrics, tag_sequences


class TokenClassificationScorer(SequenceClassificationScorer):
    def columns(self, manifest: dict | None = None) -> list[str]:
        return [TOKEN_LABELS]

    def score(self, model, rows: list[dict], tokens: list[np.ndarray], batch_size: int, pad_id: int, cache=None) -> dict:
        predictions = predict_tokens(model, tokens, batch_size, pad_id)
        labels = [r[TOKEN_LABELS][:, 0] for r in rows]
        id2label = {int(k): v for k, v in model.config.id2label.items()}
        metrics = entity_metrics(*tag_sequences(predictions, labels, id2label))
        return {"metric": "entity F1 (strict IOB2)", **metrics}
