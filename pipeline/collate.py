"""Cache rows -> padded training batches for the students (the stage-two side of the cache contract)."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import numpy as np
import torch

from pipeline.cache import attention_field, hidden_field, value_field
from pipeline.cache.codec import decode
from pipeline.cache.rows import Rows
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent
from pipeline.tasks.student import task_student
from pipeline.teachers import EXTRA_LOGITS

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def keep_freed_host_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the OS (glibc's `mallopt`).

    By default glibc maps each allocation over its mmap threshold (128 KB to 32 MB) afresh and unmaps it when freed,
    so every step's padded batch (tens of MB at batch 1,024) and the largest activations fault their pages in again:
    at batch 1,024 that cost more than the padding itself (16 of 37 us a row). Served from the heap and kept there,
    the pages are reused step after step. Skipped where glibc is not the allocator, or where the user set glibc's
    malloc variables (MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES) themselves. True when applied."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


class ConcatSplits(torch.utils.data.ConcatDataset):
    """Several cache splits read as one training set (labeled train + unlabeled transfer rows); lengths() feeds the
    length-grouped sampler."""

    def lengths(self) -> np.ndarray:
        return np.concatenate([d.lengths() for d in self.datasets])

    def __getitems__(self, indices: list[int]) -> Rows:
        """A batch drawn from several splits: each split reads its rows at once, joined in the batch's order."""
        index = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self.cumulative_sizes, index, side="right")
        parts, order = [], [(0, 0)] * len(index)
        for d in np.unique(which).tolist():
            at = np.flatnonzero(which == d)
            local = (index[at] - (self.cumulative_sizes[d - 1] if d else 0)).tolist()
            dataset = self.datasets[d]
            if hasattr(dataset, "__getitems__"):
                parts.append(dataset.__getitems__(local))
            else:
                parts.append(Rows.from_dicts([dataset[i] for i in local]))
            for j, i in enumerate(at.tolist()):
                order[i] = (len(parts) - 1, j)
        return Rows.join(parts, order)


class CacheCollator:
    """Cache rows (a `Rows` batch, or row dicts) -> a padded batch: token ids, mask, the task's labels and teacher
    targets (the student facet's `collate`: logits per example (B, L); per token (B, T, L) with token labels (B, T); a
    masked-LM cache's targets and top-k (B, T, k)), hidden states and values (B, T, H) in their stored float dtype
    (int8: fp32), and attention maps (B, heads, T, T), zero where padded."""

    def __init__(
        self,
        layers: list[int],
        pad_token_id: int = 0,
        attentions: list[int] = (),
        values: list[int] = (),
        task: str | SequenceClassificationStudent = "sequence_classification",
    ):
        self.layers, self.pad_token_id = layers, pad_token_id
        self.attentions, self.values = list(attentions), list(values)
        self.task = task_student(task) if isinstance(task, str) else task

    def __call__(self, rows: Rows | list[dict]) -> dict[str, torch.Tensor]:
        rows = rows if isinstance(rows, Rows) else Rows.from_dicts(rows)
        width = int(rows.lengths.max())
        mask = (torch.arange(width)[None, :] < torch.from_numpy(rows.lengths)[:, None]).long()
        ids = rows.padded("input_ids", width, self.pad_token_id, torch.long)
        batch = {"input_ids": ids, "attention_mask": mask, **self.task.collate(rows, width)}
        if EXTRA_LOGITS in rows:  # other teachers' logits (pipeline.teachers): (B, K, L) or per token (B, K, T, L)
            extras = rows.values(EXTRA_LOGITS)
            first = extras[0]
            extra = torch.zeros((len(rows), first.shape[0], *((width,) if first.ndim == 3 else ()), first.shape[-1]))
            for i, (value, length) in enumerate(zip(extras, rows.lengths.tolist())):
                (extra[i, :, :length] if first.ndim == 3 else extra[i])[:] = torch.from_numpy(np.asarray(value, np.float32))
            batch[f"teacher_{EXTRA_LOGITS}"] = extra
        for name in [hidden_field(layer) for layer in self.layers] + [value_field(layer) for layer in self.values]:
            batch[f"teacher_{name}"] = rows.padded(name, width, 0.0, None)  # as stored: the losses read them as fp32
        for name in [attention_field(layer) for layer in self.attentions]:
            maps = rows.values(name)
            att = torch.zeros((len(rows), maps[0].shape[0], width, width), dtype=torch.float32)
            for i, (value, length) in enumerate(zip(maps, rows.lengths.tolist())):
                att[i, :, :length, :length] = decode(value)
            batch[f"teacher_{name}"] = att
        return batch
