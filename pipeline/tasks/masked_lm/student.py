"""Masked LM's student facet: masked targets and the teacher's top-k (or sampled ids), the vocabulary head run only where
a loss reads it."""

from __future__ import annotations

import torch

from pipeline.cache.rows import Rows
from pipeline.errors import PipelineError
from pipeline.losses import LossMix, masked_lm_distillation_loss
from pipeline.mlm import IGNORE, MLM_TARGET, SAMPLED_IDS, TOPK_INDICES, TOPK_VALUES
from pipeline.scoring import argmax_logits, masked_accuracy_metrics
from pipeline.tasks.masked_lm import MaskedLMConfig
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent


class MaskedLMStudent(SequenceClassificationStudent):
    config_class = MaskedLMConfig

    def check_cache(self, manifest: dict, cfg, cache_dir) -> None:
        """The cache holds the logits form params.yaml names; sampled ids were drawn at the temperature the KL uses
        (otherwise their frequencies estimate another distribution than the loss's teacher)."""
        cached = manifest.get("logits", "topk")
        if cached != self.config.logits:
            raise PipelineError(
                f"{cache_dir}: the cache holds {cached} vocabulary logits but params.yaml says masked_lm.logits: "
                f"{self.config.logits}; rebuild the cache (dvc repro extract) or set masked_lm.logits: {cached}"
            )
        drawn_at = manifest.get("sample_temperature")
        if cached == "sampled" and cfg.beta and (cfg.temperature != drawn_at or cfg.temperature_end is not None):
            raise PipelineError(
                f"{cache_dir}: the cache's vocabulary ids were drawn at temperature {drawn_at} but the student's KL runs "
                f"at distill.temperature {cfg.temperature}"
                + (f" decaying to {cfg.temperature_end}" if cfg.temperature_end is not None else "")
                + f"; set distill.temperature: {drawn_at} (temperature_end: null) or masked_lm.sample_temperature: "
                f"{cfg.temperature} and rebuild the cache"
            )

    def _soft(self) -> list[str]:
        return [SAMPLED_IDS] if self.config.logits == "sampled" else [TOPK_VALUES, TOPK_INDICES]

    def cache_columns(self) -> list[str]:
        return [MLM_TARGET, *self._soft()]

    def collate(self, rows: Rows, width: int) -> dict[str, torch.Tensor]:
        labels = rows.padded(MLM_TARGET, width, IGNORE, torch.long)[..., 0]
        if self.config.logits == "sampled":
            return {"labels": labels, f"teacher_{SAMPLED_IDS}": rows.padded(SAMPLED_IDS, width, 0, torch.long)}
        return {
            "labels": labels,
            f"teacher_{TOPK_VALUES}": rows.padded(TOPK_VALUES, width, 0.0, torch.float32),
            f"teacher_{TOPK_INDICES}": rows.padded(TOPK_INDICES, width, 0, torch.long),
        }

    def forward_module(self, student, training: bool):
        # in training the vocabulary head runs only where a loss reads it (see loss)
        return student.base_model if training else student

    def returns_logits(self, training: bool) -> bool:
        return not training

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, training: bool):
        """Masked-LM losses at the tokens they read: the masked ones (CE; and the top-k or sampled KL with mlm_positions
        'masked') or every real token (KL with 'all'). In training the vocabulary head runs on those tokens only — at
        15% masking that skips most of the (tokens x vocabulary) projection, the bulk of a small student's step;
        otherwise (evaluation) the full logits are there and are indexed."""
        masked = labels != IGNORE
        kl_where = masked if self.config.mlm_positions == "masked" else attention_mask.bool()
        need = masked | kl_where
        logits = student.cls(out.last_hidden_state[need]) if training else out.logits[need]
        return masked_lm_distillation_loss(
            logits,
            labels[need],
            {name: teacher[f"teacher_{name}"][need] for name in self._soft()},
            kl_where[need],
            hidden_pairs,
            attention_mask,
            mix,
        )

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return {"compute_metrics": masked_accuracy_metrics, "preprocess_logits_for_metrics": argmax_logits}
