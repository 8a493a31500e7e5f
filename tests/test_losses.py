"""Golden values for every loss, computed independently with NumPy from the textbook formulas (see the constants)."""

import pytest
import torch
from torch.testing import assert_close

from pipeline.losses import distillation_loss, hard_label_loss, hidden_mse_loss, kd_kl_loss

STUDENT = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.2, 2.2]])
TEACHER = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.1, 1.5]])
LABELS = torch.tensor([1, 2])
# hidden states B=2, T=3, H=2; only tokens (0,0), (0,1), (1,0) are real
S_HID = torch.tensor([[[1.0, 2], [3, 4], [9, 9]], [[0, 1], [7, 7], [7, 7]]])
T_HID = torch.tensor([[[1.5, 2], [2, 4], [0, 0]], [[1, -1], [0, 0], [0, 0]]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])

GOLDEN_CE = 0.31618662316395996  # -mean(log_softmax(s)[y])
GOLDEN_KL_T2 = 0.5290120916595702  # T^2 * sum(pt * (log pt - log ps)) / B at T=2
GOLDEN_MSE = 6.25 / 6  # squared diffs 0.25, 0, 1, 0, 1, 4 over 3 real tokens x 2 dims


def test_hard_label_loss_golden():
    assert_close(hard_label_loss(STUDENT, LABELS), torch.tensor(GOLDEN_CE))


def test_kd_kl_loss_golden():
    assert_close(kd_kl_loss(STUDENT, TEACHER, temperature=2.0), torch.tensor(GOLDEN_KL_T2))


def test_kd_kl_loss_is_zero_for_identical_logits_and_positive_otherwise():
    assert_close(kd_kl_loss(TEACHER, TEACHER, 3.0), torch.tensor(0.0))
    assert kd_kl_loss(STUDENT, TEACHER, 1.0) > 0


def test_hidden_mse_ignores_padding_golden():
    assert_close(hidden_mse_loss(S_HID, T_HID, MASK), torch.tensor(GOLDEN_MSE))
    garbage = S_HID.clone()
    garbage[0, 2] = 1e6  # a padded position must not move the loss
    assert_close(hidden_mse_loss(garbage, T_HID, MASK), torch.tensor(GOLDEN_MSE))


def test_distillation_loss_weighted_mix_golden():
    total, parts = distillation_loss(STUDENT, LABELS, TEACHER, [(S_HID, T_HID)], MASK, alpha=0.3, beta=0.7, gamma=2.0,
                                     temperature=2.0)
    assert_close(total, torch.tensor(2.5484977844442205))
    assert_close(parts["ce"], torch.tensor(GOLDEN_CE))
    assert_close(parts["kl"], torch.tensor(GOLDEN_KL_T2))
    assert_close(parts["hidden"], torch.tensor(GOLDEN_MSE))


def test_distillation_loss_averages_layer_pairs_and_skips_zero_weights():
    total, parts = distillation_loss(STUDENT, LABELS, TEACHER, [(S_HID, T_HID), (T_HID, T_HID)], MASK, alpha=0.0, beta=0.0,
                                     gamma=1.0, temperature=2.0)
    assert set(parts) == {"hidden"}
    assert_close(total, torch.tensor(GOLDEN_MSE / 2))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_gradient_scale_is_temperature_independent_in_the_limit(temperature):
    # With T^2, d/ds = T * (softmax(s/T) - softmax(t/T)) ~ (s - t - mean(s - t)) / K for small gaps, whatever T is.
    s = torch.tensor([[0.01, -0.01]], requires_grad=True)
    kd_kl_loss(s, torch.zeros(1, 2), temperature).backward()
    assert_close(s.grad, torch.tensor([[0.005, -0.005]]), rtol=0.01, atol=1e-6)


GOLDEN_SOFT_CE_T2 = 4.465624805679267  # T^2 * mean(-sum softmax(t/T) * log_softmax(s/T)) at T=2
GOLDEN_LOGIT_MSE = 1.2950000000000002  # mean((s - t)^2)
GOLDEN_COSINE = 0.5797889869955775  # mean over the 3 real tokens of 1 - cos(s, t)


def test_soft_cross_entropy_golden_and_equal_to_kl_plus_teacher_entropy():
    from pipeline.losses import soft_cross_entropy_loss

    assert_close(soft_cross_entropy_loss(STUDENT, TEACHER, 2.0), torch.tensor(GOLDEN_SOFT_CE_T2))
    p = torch.softmax(TEACHER / 2.0, -1)
    entropy = -(p * p.log()).sum(-1).mean() * 4.0
    assert_close(soft_cross_entropy_loss(STUDENT, TEACHER, 2.0), kd_kl_loss(STUDENT, TEACHER, 2.0) + entropy)


def test_logit_mse_and_hidden_cosine_golden():
    from pipeline.losses import hidden_cosine_loss, logit_mse_loss

    assert_close(logit_mse_loss(STUDENT, TEACHER), torch.tensor(GOLDEN_LOGIT_MSE))
    assert_close(hidden_cosine_loss(S_HID, T_HID, MASK), torch.tensor(GOLDEN_COSINE))
    assert_close(hidden_cosine_loss(T_HID * 3, T_HID + 0 * MASK[..., None], MASK), torch.tensor(0.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind, part, golden", [("soft_ce", "soft_ce", GOLDEN_SOFT_CE_T2), ("mse", "mse", GOLDEN_LOGIT_MSE)])
def test_distillation_loss_selects_the_logit_and_hidden_losses(kind, part, golden):
    total, parts = distillation_loss(STUDENT, LABELS, TEACHER, [(S_HID, T_HID)], MASK, alpha=0.0, beta=1.0, gamma=2.0,
                                     temperature=2.0, logit_kind=kind, hidden_kind="cosine")
    assert_close(parts[part], torch.tensor(golden))
    assert_close(total, torch.tensor(golden + 2 * GOLDEN_COSINE))
