"""Masked LM: the teacher's top-k vocabulary logits per real token of rows masked once with seeded BERT masking (the
masking and top-k helpers are in `pipeline.mlm`); students are BertForMaskedLMs scored on masked-token accuracy."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cache import FieldSpec
from pipeline.errors import PipelineError
from pipeline.losses import LossMix, masked_lm_distillation_loss
from pipeline.mlm import IGNORE, MASKED_LM, MLM_TARGET, TOPK_INDICES, TOPK_VALUES, index_dtype, mask_tokens, masked_token_metrics
from pipeline.tasks.base import Task


class MaskedLM(Task):
    name = MASKED_LM
    architecture = "BertForMaskedLM"
    pipeline_tag = "fill-mask"
    headline = "accuracy"

    def auto_class(self):
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    def student_class(self):
        from transformers import BertForMaskedLM

        return BertForMaskedLM

    def owns(self, config) -> bool:
        return any(a.endswith("ForMaskedLM") for a in getattr(config, "architectures", None) or [])

    def teacher_trainer_kwargs(self, tokenizer, splits: dict, cfg, seed: int, label_names: list[str]) -> dict:
        """The corpus texts as token ids; the masking collator (checkpointable, `pipeline.teacher.ResumableMasking`)
        is added by `fine_tune_masked_lm`, which owns the resumable masking stream."""
        from pipeline.torch_datasets import TextDataset

        return {"train_dataset": TextDataset(splits["train"]), "eval_dataset": TextDataset(splits["dev"])}

    def extract_setup(self, cfg, model, tokenizer, teacher_dir, seed: int) -> dict:
        vocab = model.config.vocab_size
        if not 0 < cfg.topk <= vocab:
            raise PipelineError(f"params.yaml: extract.topk is {cfg.topk}; it must be between 1 and the vocabulary size {vocab}")
        if tokenizer.mask_token_id is None:
            raise PipelineError(f"{teacher_dir}: the teacher's tokenizer has no mask token; a masked-LM teacher needs one")
        return {
            "masking": {
                "seed": seed,
                "probability": cfg.mlm_probability,
                "mask_token_id": tokenizer.mask_token_id,
                "vocab_size": vocab,
                "special_ids": sorted(set(tokenizer.all_special_ids)),
            },
            "topk": cfg.topk,
        }

    def manifest_meta(self, setup: dict, cfg) -> dict:
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

    def cache_columns(self) -> list[str]:
        return [MLM_TARGET, TOPK_VALUES, TOPK_INDICES]

    def collate(self, rows: list[dict], width: int, per_token) -> dict[str, torch.Tensor]:
        return {
            "labels": per_token(rows, MLM_TARGET, width, IGNORE, torch.long)[..., 0],
            "teacher_topk_values": per_token(rows, TOPK_VALUES, width, 0.0, torch.float32),
            "teacher_topk_indices": per_token(rows, TOPK_INDICES, width, 0, torch.long),
        }

    def student_forward(self, student, training: bool):
        # in training the vocabulary head runs only where a loss reads it (see loss)
        return student.base_model if training else student

    def returns_logits(self, training: bool) -> bool:
        return not training

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, cfg, training: bool):
        """Masked-LM losses at the tokens they read: the masked ones (CE; and the top-k KL with mlm_positions
        'masked') or every real token (KL with 'all'). In training the vocabulary head runs on those tokens only — at
        15% masking that skips most of the (tokens x vocabulary) projection, the bulk of a small student's step;
        otherwise (evaluation) the full logits are there and are indexed."""
        masked = labels != IGNORE
        kl_where = masked if cfg.mlm_positions == "masked" else attention_mask.bool()
        need = masked | kl_where
        logits = student.cls(out.last_hidden_state[need]) if training else out.logits[need]
        return masked_lm_distillation_loss(
            logits,
            labels[need],
            teacher["teacher_topk_values"][need],
            teacher["teacher_topk_indices"][need],
            kl_where[need],
            hidden_pairs,
            attention_mask,
            mix,
        )

    def trainer_metrics(self, label_names: list[str]) -> dict:
        from pipeline.scoring import argmax_logits, masked_accuracy_metrics

        return {"compute_metrics": masked_accuracy_metrics, "preprocess_logits_for_metrics": argmax_logits}

    def dev_columns(self) -> list[str]:
        return [MLM_TARGET, TOPK_INDICES]

    def quality(self, model, rows: list[dict], tokens: list[np.ndarray], batch_size: int, pad_id: int, cache=None) -> dict:
        """Top-1 accuracy at the masked tokens of the cached (masked) dev rows, and agreement with the teacher's top-1."""
        from pipeline.scoring import predict_tokens

        predictions = np.concatenate(predict_tokens(model, tokens, batch_size, pad_id))
        targets = np.concatenate([r[MLM_TARGET][:, 0] for r in rows])
        teacher_top1 = np.concatenate([r[TOPK_INDICES][:, 0] for r in rows]).astype(np.int64)
        return {"metric": "masked-token accuracy", **masked_token_metrics(predictions, targets, teacher_top1)}
