"""Token classification's fields facet: the teacher's logits per real token (fp16) and the aligned labels."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cache import FieldSpec
from pipeline.tasks import TOKEN_CLASSIFICATION
from pipeline.tasks.sequence_classification.fields import SequenceClassificationFields
from pipeline.tasks.token_classification import TOKEN_LABELS, TOKEN_LOGITS


class TokenClassificationFields(SequenceClassificationFields):
    logit_field = TOKEN_LOGITS

    def manifest_meta(self, setup) -> dict:
        return {"task": TOKEN_CLASSIFICATION}

    def fields(self, setup, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        return [FieldSpec(TOKEN_LABELS, "token", "int32", 1), FieldSpec(TOKEN_LOGITS, "token", "float16", num_labels)]

    def prepared_columns(self) -> list[str]:
        return [TOKEN_LABELS]

    def host_fields(self, setup, input_ids, mask, example_ids, extra: dict):
        return input_ids, {TOKEN_LABELS: np.concatenate(extra[TOKEN_LABELS]).astype(np.int32)[:, None]}

    def device_fields(self, out, tokens, setup) -> dict[str, torch.Tensor]:
        return {TOKEN_LOGITS: tokens(out.logits).to(torch.float16)}
