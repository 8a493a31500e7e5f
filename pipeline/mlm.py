"""Masked-LM teachers: seeded masking of cached rows and the compact forms of a large-vocabulary head's logits.

A masked-LM teacher's head scores every vocabulary entry at every token (30,522 for BERT): cached in full that is
61 KB per token in fp16, so the cache keeps one of two compact forms per real token (`masked_lm.logits`), plus the
masking target of each token:

- `topk`: the k largest logits (fp16 values + vocabulary indices, uint16 when the vocabulary fits) - `masked_lm.topk`;
  students learn from them through `pipeline.losses.topk_kd_loss` (the tail is dropped: a biased target);
- `sampled`: `masked_lm.samples` vocabulary ids drawn with replacement from the teacher's softmax at
  `masked_lm.sample_temperature` (indices only, 2 bytes a draw): the draws' frequencies are an unbiased estimate of
  the teacher's whole distribution (random-sampling KD, Anshumann et al., ACL 2025); students learn through
  `pipeline.losses.sampled_kd_loss`. Each draw inverts the teacher's CDF at a uniform hashed from (seed, example id,
  position, draw), so the draws do not depend on batching, device or resume.

Masking is static and seeded, as in the original BERT pre-processing: every cached row is masked once, the teacher sees
the masked row, and the cache stores exactly what it saw so the student trains on the same inputs. The choice of
positions is a pure function of (seed, example id, position), so it does not depend on batching, device or resume.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.tasks import MASKED_LM  # noqa: F401  (re-exported: the masking code names its task)

IGNORE = -100  # target of a token that was not masked (the cross-entropy ignore index)
TOPK_VALUES, TOPK_INDICES, MLM_TARGET = "topk_values", "topk_indices", "mlm_target"
SAMPLED_IDS = "sampled_ids"


def index_dtype(vocab_size: int) -> str:
    """Cache dtype of top-k vocabulary indices: uint16 (2 bytes) when every id fits, else int32."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def _uniform(example_ids: np.ndarray, positions: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Uniform floats in [0, 1), one per (example id, position), from a splitmix64 hash: reproducible anywhere."""
    with np.errstate(over="ignore"):
        x = (
            example_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + positions.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
            + np.uint64((seed * 8 + salt) & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x94D049BB133111EB)
        )
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def mask_tokens(
    input_ids: np.ndarray,
    real: np.ndarray,
    example_ids: np.ndarray,
    *,
    seed: int,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
    special_ids: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of padded rows (rows, width): each real, non-special token is chosen with `probability`; a chosen
    token becomes [MASK] 80% of the time, a random token 10%, and stays 10%. Returns (masked ids, targets): the
    original id at chosen positions, IGNORE elsewhere."""
    positions = np.broadcast_to(np.arange(input_ids.shape[1])[None, :], input_ids.shape)
    rows = np.broadcast_to(np.asarray(example_ids)[:, None], input_ids.shape)
    chosen = (_uniform(rows, positions, seed, 0) < probability) & real & ~np.isin(input_ids, special_ids)
    action = _uniform(rows, positions, seed, 1)
    random_ids = np.minimum((_uniform(rows, positions, seed, 2) * vocab_size).astype(np.int64), vocab_size - 1)
    masked = np.where(chosen & (action < 0.8), mask_token_id, input_ids)
    masked = np.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked.astype(input_ids.dtype), np.where(chosen, input_ids, IGNORE).astype(np.int64)


def sample_uniforms(example_ids: np.ndarray, mask: np.ndarray, seed: int, draws: int) -> np.ndarray:
    """(real tokens, draws) uniforms in [0, 1) for the vocabulary draws of a padded batch's real tokens, row-major as
    the cache stores tokens: a hash of (seed, example id, position, draw), independent of batching."""
    rows, positions = np.nonzero(mask)
    ids = np.asarray(example_ids)[rows][:, None]
    slots = positions[:, None].astype(np.int64) * draws + np.arange(draws)[None, :]  # one slot per (position, draw)
    return _uniform(np.broadcast_to(ids, slots.shape), slots, seed, 3).astype(np.float32)


def sample_vocabulary(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
    """(tokens, vocab) logits -> (tokens, draws) ids drawn from softmax(logits / temperature) by inverting its CDF at
    the given uniforms; each token's draws sorted, as int32."""
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)
    at = uniforms.to(cdf.device, torch.float32) * cdf[:, -1:]  # the CDF's last entry is 1 up to rounding
    ids = torch.searchsorted(cdf, at.contiguous(), right=True).clamp_(max=logits.shape[-1] - 1)
    return ids.sort(dim=-1).values.to(torch.int32)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: over equal-width confidence bins, the |accuracy - mean confidence| gap weighted by the bin's share."""
    if not len(confidence):
        return 0.0
    which = np.minimum((np.asarray(confidence) * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.mean() * abs(float(np.mean(correct[inside])) - float(np.mean(confidence[inside])))
    return float(total)


def masked_token_metrics(
    predictions: np.ndarray,
    targets: np.ndarray,
    teacher_top1: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
) -> dict:
    """Top-1 accuracy at the masked positions (targets != IGNORE); with the teacher's top-1 there, the agreement; with
    the model's top-1 probability, its expected calibration error there (15 bins)."""
    chosen = targets != IGNORE
    correct = predictions[chosen] == targets[chosen]
    out = {"accuracy": float(np.mean(correct)) if chosen.any() else 0.0, "masked_tokens": int(chosen.sum())}
    if teacher_top1 is not None:
        out["teacher_agreement"] = float(np.mean(predictions[chosen] == teacher_top1[chosen])) if chosen.any() else 0.0
    if confidence is not None:
        out["ece"] = expected_calibration_error(confidence[chosen], correct)
    return out
