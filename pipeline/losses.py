"""Distillation losses. Each takes plain tensors and returns a scalar; `distillation_loss` mixes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the gold labels."""
    return F.cross_entropy(student_logits.float(), labels)


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over examples (Hinton et al., 2015).

    The T^2 factor keeps the soft-label gradients on the scale of the hard-label ones as T changes.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def hidden_mse_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (unmasked) tokens and all hidden dims; padding never contributes."""
    mask = attention_mask.bool()
    return F.mse_loss(student_hidden[mask].float(), teacher_hidden[mask].float())


def distillation_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                      hidden_pairs: list[tuple[torch.Tensor, torch.Tensor]], attention_mask: torch.Tensor, *,
                      alpha: float, beta: float, gamma: float, temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """alpha*CE(labels) + beta*T^2*KL(teacher||student) + gamma*mean over pairs of hidden MSE.

    `hidden_pairs` holds (projected student hidden, teacher hidden) per paired layer. Returns the total and its parts.
    """
    parts = {}
    total = student_logits.new_zeros((), dtype=torch.float32)
    if alpha:
        parts["ce"] = hard_label_loss(student_logits, labels)
        total = total + alpha * parts["ce"]
    if beta:
        parts["kl"] = kd_kl_loss(student_logits, teacher_logits, temperature)
        total = total + beta * parts["kl"]
    if gamma and hidden_pairs:
        parts["hidden"] = torch.stack([hidden_mse_loss(s, t, attention_mask) for s, t in hidden_pairs]).mean()
        total = total + gamma * parts["hidden"]
    return total, parts
