"""CPU latency of models on real token lists: medians of repeated passes, several models interleaved."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from pipeline.scoring import pad_batch


@torch.no_grad()
def paired_latency_ms(
    models: list[torch.nn.Module], token_lists: list[np.ndarray], batch_size: int, repeats: int, pad_id: int = 0, warmup: int = 3
) -> list[float]:
    """Median wall time (ms) of one CPU forward pass for each model: `repeats` passes over the same fixed batches of
    real dev examples after `warmup` untimed ones. With several models the passes are interleaved (model A, model B,
    A, B, ...) so a slow spell of a shared machine hits all of them alike and their ratio stays stable."""
    for model in models:
        model.eval()
    n_batches = min(repeats, max(1, len(token_lists) // batch_size), 8)
    batches = [
        (token_lists * (1 + batch_size // max(len(token_lists), 1)))[i * batch_size : (i + 1) * batch_size]
        for i in range(n_batches)
    ]
    inputs = [pad_batch(b, pad_id) for b in batches]
    times: list[list[float]] = [[] for _ in models]
    for i in range(warmup + repeats):
        ids, mask = inputs[i % len(inputs)]
        for k, model in enumerate(models):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if i >= warmup:
                times[k].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]
