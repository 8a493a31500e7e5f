"""Ground-floor scoring: metrics of predictions, padding, and batched prediction loops over token lists.

Nothing here knows a task, a cache or a saved model, so the Trainer's per-epoch metrics, the tasks' scorers and the
evaluation of saved models (`pipeline.evaluation`, above the tasks) can all use it without importing each other.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.mlm import masked_token_metrics


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (F1 per class, unweighted mean over classes present in labels or predictions)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    f1s = []
    for c in range(num_labels):
        tp = int(np.sum((predictions == c) & (labels == c)))
        fp = int(np.sum((predictions == c) & (labels != c)))
        fn = int(np.sum((predictions != c) & (labels == c)))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0, "f1": float(np.mean(f1s)) if f1s else 0.0}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pad_batch(token_lists: list[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = torch.as_tensor(np.asarray(t, dtype=np.int64))
        mask[i, : len(t)] = 1
    return ids, mask


@torch.no_grad()
def length_ordered_outputs(
    model: torch.nn.Module, token_lists: list[np.ndarray], batch_size: int, pad_id: int, extra_inputs=None
):
    """(rows, model output) for batches of the token lists taken in length order, to keep padding small; the caller
    puts each batch's results back at `rows`. `extra_inputs(rows, mask)` gives a batch's other inputs (QA's segment ids)."""
    model.eval()
    order = np.argsort([len(t) for t in token_lists], kind="stable")
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        ids, mask = pad_batch([token_lists[r] for r in rows], pad_id)
        extra = extra_inputs(rows, mask) if extra_inputs is not None else {}
        yield rows, model(input_ids=ids, attention_mask=mask, **extra)


@torch.no_grad()
def predict(model: torch.nn.Module, token_lists: list[np.ndarray], batch_size: int = 64, pad_id: int = 0) -> np.ndarray:
    """Logits for each token list, batched in length order (then restored) to keep padding small."""
    logits = np.zeros((len(token_lists), model.config.num_labels), dtype=np.float32)
    for rows, out in length_ordered_outputs(model, token_lists, batch_size, pad_id):
        logits[rows] = out.logits.float().numpy()
    return logits


@torch.no_grad()
def predict_tokens(
    model: torch.nn.Module, token_lists: list[np.ndarray], batch_size: int = 64, pad_id: int = 0, confidence: bool = False
) -> list:
    """Top-1 id at every token of each token list (a token-classification or masked-LM head), batched in length order;
    with `confidence`, (ids, the top-1's softmax probability) per list."""
    out: list = [np.zeros(0, dtype=np.int64)] * len(token_lists)
    for rows, batch in length_ordered_outputs(model, token_lists, batch_size, pad_id):
        best = batch.logits.float().softmax(-1).max(-1) if confidence else None
        top1 = best.indices.numpy() if confidence else batch.logits.argmax(-1).numpy()
        for j, r in enumerate(rows):
            n = len(token_lists[r])
            out[r] = (top1[j, :n], best.values[j, :n].numpy()) if confidence else top1[j, :n]
    return out


# ---- the Trainer's per-epoch metric callbacks ----------------------------------------------------------------------
def accuracy_metrics(eval_pred) -> dict:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = eval_pred.label_ids
    return classification_metrics(np.asarray(logits).argmax(-1), np.asarray(labels), int(np.asarray(logits).shape[-1]))


def argmax_logits(logits, labels):
    """Per-token vocabulary logits -> top-1 ids before the Trainer gathers them (full logits would be tokens x vocab)."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def masked_accuracy_metrics(eval_pred) -> dict:
    predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return masked_token_metrics(np.asarray(predictions), np.asarray(eval_pred.label_ids))
