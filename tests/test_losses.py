"""Golden values for every loss, computed independently with NumPy from the textbook formulas (see the constants)."""

import pytest
import torch
from torch.testing import assert_close

from pipeline.losses import LossMix, distillation_loss, hard_label_loss, hidden_mse_loss, kd_kl_loss

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
    total, parts = distillation_loss(
        STUDENT, LABELS, TEACHER, [(S_HID, T_HID)], MASK, LossMix(alpha=0.3, beta=0.7, gamma=2.0, temperature=2.0)
    )
    assert_close(total, torch.tensor(2.5484977844442205))
    assert_close(parts["ce"], torch.tensor(GOLDEN_CE))
    assert_close(parts["kl"], torch.tensor(GOLDEN_KL_T2))
    assert_close(parts["hidden"], torch.tensor(GOLDEN_MSE))


def test_distillation_loss_averages_layer_pairs_and_skips_zero_weights():
    total, parts = distillation_loss(
        STUDENT, LABELS, TEACHER, [(S_HID, T_HID), (T_HID, T_HID)], MASK, LossMix(alpha=0.0, beta=0.0, gamma=1.0, temperature=2.0)
    )
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
    total, parts = distillation_loss(
        STUDENT,
        LABELS,
        TEACHER,
        [(S_HID, T_HID)],
        MASK,
        LossMix(alpha=0.0, beta=1.0, gamma=2.0, temperature=2.0, logit_kind=kind, hidden_kind="cosine"),
    )
    assert_close(parts[part], torch.tensor(golden))
    assert_close(total, torch.tensor(golden + 2 * GOLDEN_COSINE))


# attention maps (B=2, heads=2, T=3) from these scores with padded keys masked; example 2 has 2 real tokens
ATT_S = torch.tensor(
    [
        [
            [[0.1257, -0.1321, 0.6404], [0.1049, -0.5357, 0.3616], [1.304, 0.9471, -0.7037]],
            [[-1.2654, -0.6233, 0.0413], [-2.325, -0.2188, -1.2459], [-0.7323, -0.5443, -0.3163]],
        ],
        [
            [[0.4116, 1.0425, -0.1285], [1.3665, -0.6652, 0.3515], [0.9035, 0.094, -0.7435]],
            [[-0.9217, -0.4577, 0.2202], [-1.0096, -0.2092, -0.1592], [0.5408, 0.2147, 0.3554]],
        ],
    ]
)  # noqa: E501
ATT_T = torch.tensor(
    [
        [
            [[-0.6538, -0.1296, 0.784], [1.4934, -1.2591, 1.5139], [1.3459, 0.7813, 0.2645]],
            [[-0.3139, 1.458, 1.9603], [1.8016, 1.3151, 0.3574], [-1.2083, -0.0045, 0.6565]],
        ],
        [
            [[-1.2884, 0.3951, 0.4299], [0.696, -1.1841, -0.6617], [-0.4364, -1.1698, 1.7394]],
            [[-0.4959, 0.329, -0.2586], [1.5835, 1.3204, 0.6334], [-2.2035, 0.052, 0.6837]],
        ],
    ]
)  # noqa: E501
ATT_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
GOLDEN_ATT_KL = 0.13514541648585077  # mean over real query rows and heads of sum_k t log(t/s) over real keys
GOLDEN_ATT_MSE = 0.028291958840957213  # mean over real (query, key) pairs and heads of (s - t)^2
GOLDEN_VALUE_RELATION = 0.04355041256329466  # 2 relation heads of width 2, third token padded


def _probs(scores):
    return torch.softmax(scores.masked_fill(~ATT_MASK.bool()[:, None, None, :], float("-inf")), -1)


def test_attention_losses_golden():
    from pipeline.losses import attention_kl_loss, attention_mse_loss

    s, t = _probs(ATT_S), _probs(ATT_T)
    t_padded = t.clone()
    t_padded[1, :, 2, :] = 0  # the cache stores only real tokens: padded query rows arrive as zeros
    assert_close(attention_kl_loss(s, t_padded, ATT_MASK), torch.tensor(GOLDEN_ATT_KL))
    assert_close(attention_mse_loss(s, t_padded, ATT_MASK), torch.tensor(GOLDEN_ATT_MSE))
    assert_close(attention_kl_loss(t, t_padded, ATT_MASK), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_value_relation_loss_golden():
    from pipeline.losses import value_relation_loss

    v_s = torch.tensor([[[0.5, -1.0, 0.2, 0.3], [1.0, 0.1, -0.4, 0.8], [9.0, 9.0, 9.0, 9.0]]])
    v_t = torch.tensor([[[0.1, 0.4, -0.3, 1.2], [-0.7, 0.2, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert_close(value_relation_loss(v_s, v_t, mask, heads=2), torch.tensor(GOLDEN_VALUE_RELATION))
    wide = torch.cat([v_t, v_t], -1)  # other widths work: relations are token x token
    assert value_relation_loss(wide, v_t, mask, heads=2) >= 0
