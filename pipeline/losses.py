"""Distillation losses. Each takes plain tensors and returns a scalar; `distillation_loss` mixes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossMix:
    """How the loss terms are weighted and which kinds are used: a student's distill settings at this step (the
    temperature may be scheduled)."""

    alpha: float
    beta: float
    gamma: float
    temperature: float
    logit_kind: str = "kl"
    hidden_kind: str = "mse"


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the gold labels, averaged over the labeled examples; unlabeled ones (label < 0, the
    transfer set) are skipped, and a batch without labels contributes zero."""
    labeled = labels >= 0
    if bool(labeled.all()):
        return F.cross_entropy(student_logits.float(), labels)
    if not bool(labeled.any()):
        return student_logits.float().sum() * 0.0
    return F.cross_entropy(student_logits[labeled].float(), labels[labeled])


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over examples (Hinton et al., 2015).

    The T^2 factor keeps the soft-label gradients on the scale of the hard-label ones as T changes.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def soft_cross_entropy_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over examples of -sum softmax(teacher/T) * log softmax(student/T); equals the KL loss plus the
    teacher's entropy (a constant), so gradients match KL's."""
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return -(p_teacher * log_p_student).sum(-1).mean() * temperature**2


def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between raw logits (Ba & Caruana, 2014); no temperature."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def topk_kd_loss(
    student_logits: torch.Tensor,
    topk_values: torch.Tensor,
    topk_indices: torch.Tensor,
    positions: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T^2 * KL(teacher top-k || student) per position, averaged over the selected `positions` (a boolean mask).

    The teacher's distribution is softmax(topk_values / T) over its k cached entries (the vocabulary tail beyond them
    is dropped and the k renormalised); the student's is the full-vocabulary log_softmax(student_logits / T), read at
    the same k indices. With k = the whole vocabulary this is exactly `kd_kl_loss`; for k < V it stays >= 0 (the
    student's k entries sum to at most 1) and is minimised when the student puts the teacher's top-k mass on them.
    """
    if not positions.any():
        return student_logits.sum() * 0.0  # keeps the graph; a batch without selected tokens adds nothing
    log_q = F.log_softmax(student_logits[positions].float() / temperature, dim=-1).gather(-1, topk_indices[positions].long())
    log_p = F.log_softmax(topk_values[positions].float() / temperature, dim=-1)
    return temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def sampled_kd_loss(
    student_logits: torch.Tensor, draws: torch.Tensor, positions: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(p_hat || student) per position, averaged over the selected `positions` (a boolean mask), where p_hat is
    the empirical distribution of the K vocabulary ids drawn from the teacher's softmax at T (`draws`, (n, K)).

    p_hat is unbiased for the teacher's distribution, so the loss's gradient is unbiased for the full-vocabulary KL's
    (random-sampling KD, Anshumann et al., 2025): sum_v p_hat(v) (log p_hat(v) - log q(v)) = mean over the draws of
    log p_hat(draw) - log q(draw), with p_hat(draw) = its count among the K / K. It is >= 0 and 0 when the student's
    distribution is p_hat; the draws must come from the teacher at this temperature (stage two checks)."""
    if not positions.any():
        return student_logits.sum() * 0.0
    ids = draws[positions].long()
    log_q = F.log_softmax(student_logits[positions].float() / temperature, dim=-1).gather(-1, ids)
    log_p = torch.log((ids[:, :, None] == ids[:, None, :]).sum(-1).float() / ids.shape[-1])
    return temperature**2 * (log_p - log_q).mean(-1).mean()


def masked_lm_distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    soft: dict[str, torch.Tensor],
    kl_rows: torch.Tensor,
    hidden_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    attention_mask: torch.Tensor,
    mix: LossMix,
) -> tuple[torch.Tensor, dict]:
    """DistilBERT's objective from a cache, over the token positions the head was run on (n of them):
    alpha * masked-LM cross-entropy where `targets` != -100 + beta * T^2 KL to the teacher's soft targets where
    `kl_rows` + gamma * the hidden loss over layer pairs (full sequences, real tokens). `student_logits` is
    (n, vocab); targets, kl_rows (n,); `soft` the cached form of the teacher's logits at those positions: top-k
    `topk_values` and `topk_indices` (n, k), or `sampled_ids` (n, K) draws."""
    parts = {}
    total = student_logits.new_zeros((), dtype=torch.float32)
    masked = targets != -100
    if mix.alpha:
        parts["ce"] = (
            F.cross_entropy(student_logits[masked].float(), targets[masked]) if masked.any() else student_logits.sum() * 0.0
        )
        total = total + mix.alpha * parts["ce"]
    if mix.beta:
        if "sampled_ids" in soft:
            parts["kl"] = sampled_kd_loss(student_logits, soft["sampled_ids"], kl_rows, mix.temperature)
        else:
            parts["kl"] = topk_kd_loss(student_logits, soft["topk_values"], soft["topk_indices"], kl_rows, mix.temperature)
        total = total + mix.beta * parts["kl"]
    if mix.gamma and hidden_pairs:
        parts["hidden"] = hidden_state_loss(hidden_pairs, attention_mask, mix.hidden_kind)
        total = total + mix.gamma * parts["hidden"]
    return total, parts


LOGIT_LOSSES = ("kl", "soft_ce", "mse")
HIDDEN_LOSSES = ("mse", "cosine")


def combine_teachers(logits: torch.Tensor, weights: list[float] | None, temperature: float, kind: str = "kl") -> torch.Tensor:
    """(B, K, ...) logits of K teachers -> one teacher's logits (B, ...) whose softmax at `temperature` is the weighted
    average of the K teachers' softmax at that temperature (for the kl and soft_ce logit losses); for mse, the
    weighted mean of the raw logits. `weights` (one per teacher, normalised) None = equal."""
    k = logits.shape[1]
    w = torch.full((k,), 1.0 / k) if weights is None else torch.as_tensor(weights, dtype=torch.float32) / sum(weights)
    w = w.to(logits.device).view((1, k) + (1,) * (logits.dim() - 2))
    if kind == "mse":
        return (w * logits.float()).sum(1)
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    return temperature * torch.logsumexp(log_p + torch.log(w), dim=1)


def logit_loss(kind: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if kind == "kl":
        return kd_kl_loss(student_logits, teacher_logits, temperature)
    if kind == "soft_ce":
        return soft_cross_entropy_loss(student_logits, teacher_logits, temperature)
    if kind == "mse":
        return logit_mse_loss(student_logits, teacher_logits)
    raise ValueError(f"unknown logit loss '{kind}' (one of {LOGIT_LOSSES})")


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of 1 - cos(student, teacher) (DistilBERT's cosine embedding loss, target +1)."""
    mask = attention_mask.bool()
    return (1 - F.cosine_similarity(student_hidden[mask].float(), teacher_hidden[mask].float(), dim=-1)).mean()


def hidden_mse_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (unmasked) tokens and all hidden dims; padding never contributes."""
    mask = attention_mask.bool()
    return F.mse_loss(student_hidden[mask].float(), teacher_hidden[mask].float())


def attention_kl_loss(student_att: torch.Tensor, teacher_att: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MiniLM attention transfer: KL(teacher row || student row) of attention distributions (B, heads, T, T), averaged
    over heads and real query tokens; padded keys carry no teacher mass, padded queries are skipped."""
    mask = attention_mask.bool()
    t, s = teacher_att.float(), student_att.float().clamp_min(1e-12)
    kl = torch.special.xlogy(t, t) - t * s.log()  # t log t - t log s, with 0 log 0 = 0
    per_row = kl.sum(-1)  # (B, heads, T)
    return per_row.masked_select(mask[:, None, :].expand_as(per_row)).mean()


def attention_mse_loss(student_att: torch.Tensor, teacher_att: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT-style attention MSE, here on attention probabilities, over real (query, key) pairs and all heads."""
    mask = attention_mask.bool()
    pair = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(student_att)
    return F.mse_loss(student_att.float().masked_select(pair), teacher_att.float().masked_select(pair))


def value_relation(values: torch.Tensor, attention_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """MiniLM value relation softmax(V_h V_h^T / sqrt(d)) per relation head over real keys: (B, T, H) -> (B, heads, T, T)."""
    b, t, h = values.shape
    v = values.float().view(b, t, heads, h // heads).transpose(1, 2)
    scores = v @ v.transpose(-1, -2) / (h // heads) ** 0.5
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


def value_relation_loss(
    student_values: torch.Tensor, teacher_values: torch.Tensor, attention_mask: torch.Tensor, heads: int
) -> torch.Tensor:
    """MiniLM value-relation transfer: KL between teacher and student value relations with `heads` relation heads
    (the widths may differ; each must divide by `heads`)."""
    return attention_kl_loss(
        value_relation(student_values, attention_mask, heads),
        value_relation(teacher_values, attention_mask, heads),
        attention_mask,
    )


def hidden_state_loss(
    hidden_pairs: list[tuple[torch.Tensor, torch.Tensor]], attention_mask: torch.Tensor, kind: str
) -> torch.Tensor:
    """The hidden loss (MSE or cosine over real tokens) averaged over the paired layers."""
    hidden_loss = hidden_cosine_loss if kind == "cosine" else hidden_mse_loss
    return torch.stack([hidden_loss(s, t, attention_mask) for s, t in hidden_pairs]).mean()


def distillation_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    hidden_pairs: list[tuple[torch.Tensor, torch.Tensor]],
    attention_mask: torch.Tensor,
    mix: LossMix,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha*CE(labels) + beta*logit loss (default T^2*KL(teacher||student)) + gamma*mean over pairs of the hidden
    loss (default MSE over real tokens).

    `hidden_pairs` holds (projected student hidden, teacher hidden) per paired layer. Returns the total and its parts.
    """
    parts = {}
    total = student_logits.new_zeros((), dtype=torch.float32)
    if mix.alpha:
        parts["ce"] = hard_label_loss(student_logits, labels)
        total = total + mix.alpha * parts["ce"]
    if mix.beta:
        parts["kl" if mix.logit_kind == "kl" else mix.logit_kind] = soft = logit_loss(
            mix.logit_kind, student_logits, teacher_logits, mix.temperature
        )
        total = total + mix.beta * soft
    if mix.gamma and hidden_pairs:
        parts["hidden"] = hidden_state_loss(hidden_pairs, attention_mask, mix.hidden_kind)
        total = total + mix.gamma * parts["hidden"]
    return total, parts
