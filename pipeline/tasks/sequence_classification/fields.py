"""Sequence classification's fields facet: the teacher's logits per example."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.cache import FieldSpec
from pipeline.tasks import Configured


class SequenceClassificationFields(Configured):
    """The extract stage's facet of a task: the cache fields of the teacher's logit-level outputs, the host-side
    fields written beside them, and tables kept beside the shards."""

    logit_field = "logits"

    def setup(self, model, tokenizer, teacher_dir, seed: int) -> dict | None:
        """Task state the extraction loop needs (masking settings of a masked-LM teacher); None when there is none."""
        return None

    def manifest_meta(self, setup: dict | None) -> dict:
        """Manifest keys of the task. A sequence classifier's cache carries none, so its manifest (and bytes) stay as
        they were before tasks existed; every other task records `task`."""
        return {}

    def fields(self, setup: dict | None, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        """The cache fields of the teacher's logit-level outputs (and host-side fields), before the hidden layers."""
        return [FieldSpec(self.logit_field, "example", "float32", num_labels)]

    def prepared_columns(self) -> list[str]:
        """Columns of the prepared splits besides example_id, input_ids, length and label that extraction reads."""
        return []

    def host_fields(self, setup: dict | None, input_ids: np.ndarray, mask: np.ndarray, example_ids: np.ndarray, extra: dict):
        """Per batch, before the forward: (the ids the teacher sees, fields computed on the host). `extra` holds the
        batch's rows of the prepared split's task columns."""
        return input_ids, {}

    def batch_inputs(self, setup: dict | None, input_ids: np.ndarray, mask: np.ndarray, example_ids: np.ndarray, extra: dict):
        """Per batch, host arrays that go to the device: (inputs the teacher's forward takes besides input_ids and
        attention_mask, e.g. segment ids; keyword tensors `device_fields` takes, e.g. a masked LM's uniforms)."""
        return {}, {}

    def device_fields(self, out, tokens, setup: dict | None) -> dict[str, torch.Tensor]:
        """Per batch, after the forward: the logit-level fields on the device. `tokens(t)` selects real tokens."""
        return {self.logit_field: out.logits.float()}

    def cache_tables(self, splits: dict) -> dict[str, Any]:
        """Tables (pyarrow) the cache keeps beside its shards, from the prepared splits: what scoring needs that is
        not per token or per example (a QA task's question texts and reference answers)."""
        return {}
