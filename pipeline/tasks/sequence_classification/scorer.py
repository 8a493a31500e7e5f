"""Sequence classification's scorer facet: accuracy and macro-F1 of a saved model on cached rows."""

from __future__ import annotations

import numpy as np

from pipeline.scoring import classification_metrics, predict


class SequenceClassificationScorer:
    """The evaluate stage's facet of a task: the metrics of a saved model on the cache's dev (or val) rows."""

    def columns(self, manifest: dict | None = None) -> list[str]:
        """Cache fields of the rows that scoring a model needs (token ids and labels always come), for a cache with
        this manifest."""
        return []

    def score(self, model, rows: list[dict], tokens: list[np.ndarray], batch_size: int, pad_id: int, cache=None) -> dict:
        """Metrics of `model` on `rows` of `cache`, the head's headline among them."""
        logits = predict(model, tokens, batch_size, pad_id)
        return classification_metrics(logits.argmax(-1), np.array([r["label"] for r in rows]), model.config.num_labels)
