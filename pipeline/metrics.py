"""Quality, size and speed of a saved classifier, measured the same way for the teacher and every student."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from pipeline.cache import TeacherCache
from pipeline.errors import PipelineError


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
    return {"accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
            "f1": float(np.mean(f1s)) if f1s else 0.0}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def pad_batch(token_lists: list[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, :len(t)] = torch.as_tensor(np.asarray(t, dtype=np.int64))
        mask[i, :len(t)] = 1
    return ids, mask


@torch.no_grad()
def predict(model: torch.nn.Module, token_lists: list[np.ndarray], batch_size: int = 64, pad_id: int = 0) -> np.ndarray:
    """Logits for each token list, batched in length order (then restored) to keep padding small."""
    model.eval()
    order = np.argsort([len(t) for t in token_lists], kind="stable")
    logits = np.zeros((len(token_lists), model.config.num_labels), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        ids, mask = pad_batch([token_lists[r] for r in rows], pad_id)
        logits[rows] = model(input_ids=ids, attention_mask=mask).logits.float().numpy()
    return logits


@torch.no_grad()
def cpu_latency_ms(model: torch.nn.Module, token_lists: list[np.ndarray], batch_size: int, repeats: int, pad_id: int = 0,
                   warmup: int = 3) -> float:
    """Median wall time (ms) of one forward pass on CPU: `repeats` passes over the same fixed batches of real dev
    examples, after `warmup` untimed passes (the same inputs for every model, so models compare like for like)."""
    model.eval()
    n_batches = min(repeats, max(1, len(token_lists) // batch_size), 8)
    batches = [(token_lists * (1 + batch_size // max(len(token_lists), 1)))[i * batch_size:(i + 1) * batch_size]
               for i in range(n_batches)]
    inputs = [pad_batch(b, pad_id) for b in batches]
    times = []
    for i in range(warmup + repeats):
        ids, mask = inputs[i % len(inputs)]
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _load_classifier(model_dir: Path):
    if not (Path(model_dir) / "config.json").is_file():
        raise PipelineError(f"{model_dir}: no saved model (config.json missing); run the stage that trains it first")
    return AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).to("cpu").eval()


def _score(model: torch.nn.Module, cache_dir: Path, batch_size: int, latency_batch_sizes: list[int],
           latency_repeats: int) -> dict:
    """Accuracy/F1 on the cache's dev rows (token ids and labels only) and median CPU latency per batch size."""
    dev = TeacherCache(cache_dir, verify="lazy").split("dev", columns=[])
    rows = [dev[i] for i in range(len(dev))]
    tokens = [r["input_ids"] for r in rows]
    pad_id = model.config.pad_token_id or 0
    logits = predict(model, tokens, batch_size, pad_id)
    result = classification_metrics(logits.argmax(-1), np.array([r["label"] for r in rows]), model.config.num_labels)
    result.update({"dev_rows": len(rows), "params": count_parameters(model), "cpu_threads": torch.get_num_threads()})
    for bs in latency_batch_sizes:
        result[f"latency_ms_b{bs}"] = round(cpu_latency_ms(model, tokens, bs, latency_repeats, pad_id), 3)
    return result


def evaluate_saved_model(model_dir: Path, cache_dir: Path, *, batch_size: int, latency_batch_sizes: list[int],
                         latency_repeats: int) -> dict:
    """Dev accuracy/F1, size and CPU latency of a saved classifier."""
    model = _load_classifier(model_dir)
    result = _score(model, cache_dir, batch_size, latency_batch_sizes, latency_repeats)
    result.update({"size_mb": round(weights_bytes(model_dir) / 1e6, 2), "layers": model.config.num_hidden_layers,
                   "hidden_size": model.config.hidden_size})
    return result


def compare_to_teacher(student: dict, teacher: dict) -> dict:
    """Retention (student / teacher accuracy and F1) and latency speedups (teacher / student)."""
    out = {"retention": round(student["accuracy"] / teacher["accuracy"], 4) if teacher["accuracy"] else None,
           "f1_retention": round(student["f1"] / teacher["f1"], 4) if teacher["f1"] else None,
           "param_ratio": round(student["params"] / teacher["params"], 4)}
    for key in student:
        if key.startswith("latency_ms_") and teacher.get(key):
            out[f"speedup_{key.removeprefix('latency_ms_')}"] = round(teacher[key] / student[key], 3)
    return out


class EnsembleClassifier(torch.nn.Module):
    """Averages the logits of several classifiers; evaluated exactly like a single model."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, input_ids, attention_mask):
        from types import SimpleNamespace

        logits = torch.stack([m(input_ids=input_ids, attention_mask=attention_mask).logits.float() for m in self.members])
        return SimpleNamespace(logits=logits.mean(0))


def evaluate_ensemble(member_dirs: list[Path], cache_dir: Path, *, batch_size: int, latency_batch_sizes: list[int],
                      latency_repeats: int) -> dict:
    """Accuracy/F1, total params and size, and CPU latency (all members run) of the logit-averaging ensemble."""
    members = [_load_classifier(d) for d in member_dirs]
    if len({m.config.num_labels for m in members}) != 1:
        raise PipelineError(f"ensemble members disagree on the number of labels: {[str(d) for d in member_dirs]}")
    result = _score(EnsembleClassifier(members).eval(), cache_dir, batch_size, latency_batch_sizes, latency_repeats)
    result.update({"members": [Path(d).name for d in member_dirs],
                   "size_mb": round(sum(weights_bytes(d) for d in member_dirs) / 1e6, 2),
                   "layers": sum(m.config.num_hidden_layers for m in members)})
    return result
