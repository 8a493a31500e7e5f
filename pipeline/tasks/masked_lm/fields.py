"""Masked LM's fields facet: the masked token targets and the teacher's top-k logits (or sampled ids) per real token."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cache import FieldSpec
from pipeline.errors import PipelineError
from pipeline.mlm import (
    MASKED_LM,
    MLM_TARGET,
    SAMPLED_IDS,
    TOPK_INDICES,
    TOPK_VALUES,
    index_dtype,
    mask_tokens,
    sample_uniforms,
    sample_vocabulary,
)
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
            **(self._topk() if self.config.logits == "topk" else self._sampled()),
        }

    def _topk(self) -> dict:
        return {"logits": "topk", "topk": self.config.topk}

    def _sampled(self) -> dict:
        return {"logits": "sampled", "samples": self.config.samples, "sample_temperature": self.config.sample_temperature}

    def manifest_meta(self, setup: dict) -> dict:
        masking = setup["masking"]
        # a top-k cache's manifest stays as before sampling existed (no `logits` key: read as "topk")
        soft = {k: setup[k] for k in ("topk", "samples", "sample_temperature") if k in setup}
        if setup["logits"] != "topk":
            soft["logits"] = setup["logits"]
        return {
            "task": MASKED_LM,
            **soft,
            "vocab_size": masking["vocab_size"],
            "masking": {k: masking[k] for k in ("seed", "probability", "mask_token_id", "special_ids")},
        }

    def fields(self, setup: dict, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        if setup["logits"] == "sampled":
            soft = [FieldSpec(SAMPLED_IDS, "token", index_dtype(vocab_size), setup["samples"])]
        else:
            soft = [
                FieldSpec(TOPK_VALUES, "token", "float16", setup["topk"]),
                FieldSpec(TOPK_INDICES, "token", index_dtype(vocab_size), setup["topk"]),
            ]
        return [FieldSpec(MLM_TARGET, "token", "int32", 1), *soft]

    def host_fields(self, setup: dict, input_ids: np.ndarray, mask: np.ndarray, example_ids: np.ndarray, extra: dict):
        """The teacher sees (and the cache keeps) the masked row."""
        input_ids, targets = mask_tokens(input_ids, mask, example_ids, **setup["masking"])
        return input_ids, {MLM_TARGET: targets[mask].astype(np.int32)[:, None]}

    def batch_inputs(self, setup: dict, input_ids: np.ndarray, mask: np.ndarray, example_ids: np.ndarray, extra: dict):
        """`sampled`: the uniforms each real token's draws invert the teacher's CDF at (for `device_fields`)."""
        if setup["logits"] != "sampled":
            return {}, {}
        return {}, {"uniforms": sample_uniforms(example_ids, mask, setup["masking"]["seed"], setup["samples"])}

    def device_fields(self, out, tokens, setup: dict, uniforms=None) -> dict[str, torch.Tensor]:
        """The k largest vocabulary logits of each real token, or its draws from the teacher's softmax; indices
        narrowed to the field's dtype on the host."""
        if setup["logits"] == "sampled":
            return {SAMPLED_IDS: sample_vocabulary(tokens(out.logits), uniforms, setup["sample_temperature"])}
        top = tokens(out.logits).topk(setup["topk"], dim=-1)
        return {TOPK_VALUES: top.values.to(torch.float16), TOPK_INDICES: top.indices.to(torch.int32)}
