"""Entity-level scores of tag sequences (strict IOB2, as seqeval's mode='strict'), and the Trainer's per-epoch entity
metrics."""

from __future__ import annotations

import numpy as np

from pipeline.scoring import argmax_logits
from pipeline.tasks.token_classification import IGNORE


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every entity in strict IOB2: B-X starts one and I-X continue it; an I-X that does not
    continue an entity of type X belongs to none."""
    found, current = set(), None
    for i, tag in enumerate(list(tags) + ["O"]):
        if current is not None and not (tag.startswith("I-") and tag[2:] == current[0]):
            found.add((current[0], current[1], i - 1))
            current = None
        if tag.startswith("B-"):
            current = (tag[2:], i)
    return found


def entity_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Micro precision / recall / F1 over entities (strict IOB2, as seqeval's mode='strict'), F1 per entity type,
    and token accuracy."""
    true_set = {(s, *e) for s, row in enumerate(true_tags) for e in entities(row)}
    pred_set = {(s, *e) for s, row in enumerate(pred_tags) for e in entities(row)}

    def prf(t: set, p: set) -> tuple[float, float, float]:
        hit = len(t & p)
        precision = hit / len(p) if p else 0.0
        recall = hit / len(t) if t else 0.0
        return precision, recall, (2 * precision * recall / (precision + recall) if precision + recall else 0.0)

    precision, recall, f1 = prf(true_set, pred_set)
    tokens = sum(len(r) for r in true_tags)
    correct = sum(a == b for t, p in zip(true_tags, pred_tags) for a, b in zip(t, p))
    out = {"accuracy": correct / tokens if tokens else 0.0, "precision": precision, "recall": recall, "f1": f1}
    for kind in sorted({e[1] for e in true_set | pred_set}):
        out[f"f1_{kind}"] = prf({e for e in true_set if e[1] == kind}, {e for e in pred_set if e[1] == kind})[2]
    out["entities"] = len(true_set)
    return out


def tag_sequences(predictions: list[np.ndarray], labels: list[np.ndarray], id2label: dict) -> tuple[list, list]:
    """Per row, the gold and predicted tag names at the labelled sub-words (labels != IGNORE)."""
    true_tags, pred_tags = [], []
    for p, y in zip(predictions, labels):
        keep = y != IGNORE
        true_tags.append([id2label[int(i)] for i in y[keep]])
        pred_tags.append([id2label[int(i)] for i in p[keep]])
    return true_tags, pred_tags


def trainer_metrics(label_names: list[str]) -> dict:
    """compute_metrics (entity F1 of the argmax tags) and the argmax before the Trainer gathers the logits."""
    id2label = dict(enumerate(label_names))

    def compute(eval_pred) -> dict:
        predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        true_tags, pred_tags = tag_sequences(list(np.asarray(predictions)), list(np.asarray(eval_pred.label_ids)), id2label)
        scores = entity_metrics(true_tags, pred_tags)
        return {k: scores[k] for k in ("accuracy", "precision", "recall", "f1")}

    return {"compute_metrics": compute, "preprocess_logits_for_metrics": argmax_logits}
