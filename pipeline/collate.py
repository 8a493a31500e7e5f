"""Cache rows -> padded training batches for the students (the stage-two side of the cache contract)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cache import attention_field, hidden_field, value_field
from pipeline.cache.codec import decode
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent
from pipeline.tasks.student import task_student
from pipeline.teachers import EXTRA_LOGITS


class ConcatSplits(torch.utils.data.ConcatDataset):
    """Several cache splits read as one training set (labeled train + unlabeled transfer rows); lengths() feeds the
    length-grouped sampler."""

    def lengths(self) -> np.ndarray:
        return np.concatenate([d.lengths() for d in self.datasets])


class CacheCollator:
    """Cache rows -> a padded batch: token ids, mask, the task's labels and teacher targets (the student facet's `collate`: logits
    per example (B, L); per token (B, T, L) with token labels (B, T); a masked-LM cache's targets and top-k (B, T, k)),
    hidden states and values (B, T, H), and attention maps (B, heads, T, T), zero where padded."""

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

    def _per_token(self, rows: list[dict], name: str, width: int, fill, dtype: torch.dtype) -> torch.Tensor:
        out = torch.full((len(rows), width, rows[0][name].shape[-1]), fill, dtype=dtype)
        for i, r in enumerate(rows):
            out[i, : r["length"]] = torch.from_numpy(
                np.asarray(r[name]).astype(np.int64 if not dtype.is_floating_point else np.float32)
            )
        return out

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(r["length"] for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : r["length"]] = torch.from_numpy(r["input_ids"].astype(np.int64))
            mask[i, : r["length"]] = 1
        batch = {"input_ids": ids, "attention_mask": mask, **self.task.collate(rows, width, self._per_token)}
        if EXTRA_LOGITS in rows[0]:  # other teachers' logits (pipeline.teachers): (B, K, L) or per token (B, K, T, L)
            first = rows[0][EXTRA_LOGITS]
            extra = torch.zeros((len(rows), first.shape[0], *((width,) if first.ndim == 3 else ()), first.shape[-1]))
            for i, r in enumerate(rows):
                extra[i, :, : r["length"]] = torch.from_numpy(np.asarray(r[EXTRA_LOGITS], dtype=np.float32))
            batch[f"teacher_{EXTRA_LOGITS}"] = extra
        for name in [hidden_field(layer) for layer in self.layers] + [value_field(layer) for layer in self.values]:
            hid = torch.zeros((len(rows), width, rows[0][name].shape[-1]), dtype=torch.float32)
            for i, r in enumerate(rows):
                hid[i, : r["length"]] = decode(r[name])
            batch[f"teacher_{name}"] = hid
        for name in [attention_field(layer) for layer in self.attentions]:
            att = torch.zeros((len(rows), rows[0][name].shape[0], width, width), dtype=torch.float32)
            for i, r in enumerate(rows):
                att[i, :, : r["length"], : r["length"]] = decode(r[name])
            batch[f"teacher_{name}"] = att
        return batch
