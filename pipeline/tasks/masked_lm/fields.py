"""Masked LM's fields facet: the masked token targets and the teacher's top-k logits per real token."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cache import FieldSpec
from pipeline.errors import PipelineError
from pipeline.mlm import MASKED_LM, MLM_TARGET, TOPK_INDICES, TOPK_VALUES, index_dtype, mask_tokens
from pipeline.tasks.masked_lm import MaskedLMConfig
from pipeline.tasks.sequence_classification.fields import SequenceClassificationFields


class MaskedLMFields(SequenceClassificationFields):
    config_class = MaskedLMConfig

    def setup(self, model, tokenizer, teacher_dir, seed: int) -> dict:
        vocab = model.config.vocab_size
        if not 0 < self.config.topk <= vocab:
            raise PipelineError(
                f"params.yaml: masked_lm.topk is {self.config.topk}; it must be between 1 and the vocabulary size {vocab}"
            )
        if tokenizer.mask_token_id is None:
            raise PipelineError(f"{teacher_dir}: the teacher's tokenizer has no mask token; a masked-LM teacher needs one")
        return {
            "masking": {
                "seed": seed,
                "probability": self.config.mlm_probability,
                "mask_token_id": tokenizer.mask_token_id,
                "vocab_size": vocab,
                "special_ids": sorted(set(tokenizer.all_special_ids)),
            },
            "topk": self.config.topk,
        }

    def manifest_meta(self, setup: dict) -> dict:
        masking = setup["masking"]
        return {
            "task": MASKED_LM,
            "topk": setup["topk"],
            "vocab_size": masking["vocab_size"],
            "masking": {k: masking[k] for k in ("seed", "probability", "mask_token_id", "special_ids")},
        }

    def fields(self, setup: dict, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        return [
            FieldSpec(MLM_TARGET, "token", "int32", 1),
            FieldSpec(TOPK_VALUES, "token", "float16", setup["topk"]),
            FieldSpec(TOPK_INDICES, "token", index_dtype(vocab_size), setup["topk"]),
        ]

    def host_fields(self, setup: dict, input_ids: np.ndarray, mask: np.ndarray, example_ids: np.ndarray, extra: dict):
        """The teacher sees (and the cache keeps) the masked row."""
        input_ids, targets = mask_tokens(input_ids, mask, example_ids, **setup["masking"])
        return input_ids, {MLM_TARGET: targets[mask].astype(np.int32)[:, None]}

    def device_fields(self, out, tokens, setup: dict) -> dict[str, torch.Tensor]:
        """The k largest vocabulary logits of each real token; indices narrowed to the field's dtype on the host."""
        top = tokens(out.logits).topk(setup["topk"], dim=-1)
        return {TOPK_VALUES: top.values.to(torch.float16), TOPK_INDICES: top.indices.to(torch.int32)}
