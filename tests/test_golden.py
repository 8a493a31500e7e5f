"""Golden values: a change in what the pipeline computes fails here, not only a change in whether it runs.

The values were recorded from this code on the tiny fixtures (a seeded random 4-layer teacher over 300 real SST-2 rows),
CPU, torch 2.13. Tolerances absorb float noise between CPUs, not behaviour: a different layer index, masking, loss
weighting, sampler order or learning-rate schedule moves these numbers by far more. When a change is meant to alter
them, rerecord them in the same commit and say why.
"""

import numpy as np
import torch

from pipeline.cache import TeacherCache
from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_student

# step -> (total loss, hard-label CE, T^2 KL, hidden MSE), logged every step of a 19-step run
GOLDEN_LOSSES = {
    1: (1.8169991970062256, 0.6925584077835083, 0.00011750543490052223, 1.4706612825393677),
    5: (1.7694379091262817, 0.6924229860305786, 0.00013795867562294006, 1.4231574535369873),
    10: (1.689762830734253, 0.6943562626838684, 0.00017942488193511963, 1.3424949645996094),
    19: (1.6359083652496338, 0.6944730281829834, 0.0001527676358819008, 1.28859543800354),
}
# the first dev row of the tiny cache (example id 79): its logits, two tokens of hidden_2, the last token of hidden_4
GOLDEN_LOGITS = [0.008893098682165146, -0.01859980821609497]
GOLDEN_HIDDEN_2 = [
    [1.3935546875, 1.0751953125, -0.2274169921875, 0.478515625, -0.34326171875, -0.9267578125],
    [0.1146240234375, 0.2178955078125, 0.6806640625, 0.72216796875, 1.5830078125, -1.7724609375],
]
GOLDEN_HIDDEN_4_LAST = [0.646484375, 0.4462890625, 0.06744384765625, 0.5029296875, 0.1842041015625, -1.263671875]


def test_the_cache_holds_the_recorded_teacher_outputs(tiny_cache):
    row = TeacherCache(tiny_cache).split("dev")[0]
    assert row["example_id"] == 79
    np.testing.assert_allclose(row["logits"], GOLDEN_LOGITS, atol=1e-4)
    np.testing.assert_allclose(row["hidden_2"][:2, :6].astype(np.float32), GOLDEN_HIDDEN_2, atol=4e-3)  # fp16 storage
    np.testing.assert_allclose(row["hidden_4"][-1, :6].astype(np.float32), GOLDEN_HIDDEN_4_LAST, atol=4e-3)


def test_a_short_distill_run_logs_the_recorded_losses(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # recorded on the CPU: a GPU run differs legitimately
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    cfg = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=1)
    result = distill_student(tiny_cache, tmp_path / "s", spec, cfg, seed=0)
    logged = {h["step"]: h for h in result["history"] if "loss" in h}
    assert len(logged) == 19
    for step, (total, ce, kl, hidden) in GOLDEN_LOSSES.items():
        got = logged[step]
        torch.testing.assert_close(
            torch.tensor([got["loss"], got["loss_ce"], got["loss_kl"], got["loss_hidden"]], dtype=torch.float64),
            torch.tensor([total, ce, kl, hidden], dtype=torch.float64),
            rtol=1e-4,
            atol=1e-6,
            msg=lambda m, step=step: f"step {step}: {m}",
        )
