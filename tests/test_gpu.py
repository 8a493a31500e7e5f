"""Stage one and two on a CUDA device (skipped without one; CI has none, the lent GPU machine runs them).

On a GPU, extraction runs the teacher under bf16 autocast and copies its outputs to pinned host memory without
blocking; the writer thread waits on each batch's CUDA event. These tests check that what lands in the cache is the
teacher's output for the right rows, that a GPU extraction is reproducible byte for byte (resume depends on it), and
that a kill -9 mid-extraction on the GPU resumes to the same bytes.
"""

import json
import random

import numpy as np
import pytest
import torch
import transformers

from pipeline.cache import TeacherCache
from pipeline.config import DistillConfig, StudentSpec
from pipeline.data import save_prepared
from pipeline.distill import distill_student
from pipeline.mlm import MLM_TARGET, SAMPLED_IDS, TOPK_INDICES, TOPK_VALUES
from tests.conftest import build_cache, build_mlm_cache, needs_gpu
from tests.test_resume import _digest, _extract

pytestmark = needs_gpu


def _rows_by_id(cache, split):
    data = TeacherCache(cache).split(split)
    return {int(data[i]["example_id"]): data[i] for i in range(len(data))}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "int8"])
def test_gpu_cache_matches_the_cpu_cache_up_to_bf16_rounding(tmp_path, tiny_teacher, tiny_prepared, dtype):
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "cpu", dtype=dtype, attentions=[2], values=[4], device="cpu")
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "gpu", dtype=dtype, attentions=[2], values=[4], device="cuda")
    cpu_manifest, gpu_manifest = (TeacherCache(tmp_path / d).manifest for d in ("cpu", "gpu"))
    assert cpu_manifest["fields"] == gpu_manifest["fields"]
    for split in ("train", "dev"):
        cpu, gpu = _rows_by_id(tmp_path / "cpu", split), _rows_by_id(tmp_path / "gpu", split)
        assert cpu.keys() == gpu.keys()
        for key in cpu:
            a, b = cpu[key], gpu[key]
            assert a["input_ids"].tolist() == b["input_ids"].tolist() and a["label"] == b["label"]
            np.testing.assert_allclose(b["logits"], a["logits"], atol=0.05, rtol=0.05)
            for name in ("hidden_2", "hidden_4", "attention_2", "value_4"):
                assert a[name].shape == b[name].shape, name
            if dtype == "float16":  # bf16 autocast on the GPU vs float32 on the CPU: close, not equal
                np.testing.assert_allclose(
                    b["hidden_4"].astype(np.float32), a["hidden_4"].astype(np.float32), atol=0.1, rtol=0.05
                )
                att = b["attention_2"].astype(np.float32)
                np.testing.assert_allclose(att, a["attention_2"].astype(np.float32), atol=0.02)


def test_gpu_extraction_is_byte_identical_run_to_run(tmp_path, tiny_teacher, tiny_prepared):
    a = build_cache(tiny_teacher, tiny_prepared, tmp_path / "a", device="cuda")
    b = build_cache(tiny_teacher, tiny_prepared, tmp_path / "b", device="cuda")
    shas = lambda m: [s["xxh3_128"] for sp in m["manifest"]["splits"].values() for s in sp["shards"]]  # noqa: E731
    assert shas(a) == shas(b)


def test_gpu_kill_minus_nine_then_resume_is_byte_identical(tmp_path, tiny_teacher, tiny_prepared):
    prepared = tmp_path / "prepared"
    save_prepared(prepared, *tiny_prepared)
    reference = _extract(prepared, tiny_teacher, tmp_path / "reference", device="cuda")
    assert reference.returncode == 0, reference.stderr[-2000:]
    want = _digest(tmp_path / "reference")
    total = (len(tiny_prepared[0]["train"]) + 7) // 8 + (len(tiny_prepared[0]["dev"]) + 7) // 8
    out, rng, killed = tmp_path / "cache", random.Random(7), 0
    for point in sorted(rng.sample(range(1, total), 4)):
        proc = _extract(prepared, tiny_teacher, out, kill_after=point, delay=rng.uniform(0, 0.01), device="cuda")
        assert proc.returncode in (0, -9), proc.stderr[-2000:]
        killed += proc.returncode == -9
        if proc.returncode == 0:
            out.rename(tmp_path / f"done_{point}")
    final = _extract(prepared, tiny_teacher, out, device="cuda")
    assert final.returncode == 0, final.stderr[-2000:]
    assert killed >= 2 and _digest(out) == want


def test_students_train_on_the_gpu_from_a_gpu_cache(tmp_path, tiny_teacher, tiny_prepared):
    cache = tmp_path / "cache"
    build_cache(tiny_teacher, tiny_prepared, cache, device="cuda")
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    cfg = DistillConfig(
        epochs=3, batch_size=16, learning_rate=1e-3, alpha=0.0, beta=1.0, gamma=1.0, temperature=1.0, logging_steps=2
    )
    result = distill_student(cache, tmp_path / "student", spec, cfg, seed=0, teacher_dir=tiny_teacher)
    assert torch.cuda.max_memory_allocated() > 0
    losses = [h["loss"] for h in result["history"] if "loss" in h]
    assert losses and all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    student = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    dev = TeacherCache(cache).split("dev")
    with torch.no_grad():
        agree = [
            int(student(input_ids=torch.tensor(dev[i]["input_ids"][None].astype(np.int64))).logits[0].argmax())
            == int(dev[i]["logits"].argmax())
            for i in range(len(dev))
        ]
    assert np.mean(agree) >= 0.8, np.mean(agree)
    assert json.loads((tmp_path / "student" / "config.json").read_text())["num_hidden_layers"] == 2


def test_masked_lm_topk_cache_on_the_gpu_matches_the_cpu(tmp_path, mlm_teacher, tiny_prepared):
    """Same masking (a function of seed, id and position), same targets and inputs; top-k values within bf16 rounding
    and the top-1 index the same wherever the CPU's top two logits are not a near tie."""
    build_mlm_cache(mlm_teacher, tiny_prepared, tmp_path / "cpu", device="cpu")
    build_mlm_cache(mlm_teacher, tiny_prepared, tmp_path / "gpu", device="cuda")
    for split in ("train", "dev"):
        cpu, gpu = _rows_by_id(tmp_path / "cpu", split), _rows_by_id(tmp_path / "gpu", split)
        assert cpu.keys() == gpu.keys()
        for key, c in cpu.items():
            g = gpu[key]
            assert (c["input_ids"] == g["input_ids"]).all() and (c[MLM_TARGET] == g[MLM_TARGET]).all()
            cv, gv = c[TOPK_VALUES].astype(np.float32), g[TOPK_VALUES].astype(np.float32)
            assert np.allclose(cv[:, 0], gv[:, 0], atol=0.05 + 0.02 * np.abs(cv[:, 0]).max())
            clear = cv[:, 0] - cv[:, 1] > 0.1
            assert (c[TOPK_INDICES][clear, 0] == g[TOPK_INDICES][clear, 0]).all()


def test_masked_lm_sampled_cache_on_the_gpu_draws_as_the_cpu(tmp_path, mlm_teacher, tiny_prepared):
    """The same uniforms (a hash of seed, id, position, draw) invert nearly the same CDF: the teacher's bf16 logits on
    the GPU move a boundary only now and then, so nearly every draw is the CPU's."""
    sampled = dict(logits="sampled", samples=16, sample_temperature=1.0)
    build_mlm_cache(mlm_teacher, tiny_prepared, tmp_path / "cpu", device="cpu", **sampled)
    build_mlm_cache(mlm_teacher, tiny_prepared, tmp_path / "gpu", device="cuda", **sampled)
    same, total = 0, 0
    for split in ("train", "dev"):
        cpu, gpu = _rows_by_id(tmp_path / "cpu", split), _rows_by_id(tmp_path / "gpu", split)
        for key, c in cpu.items():
            assert (c["input_ids"] == gpu[key]["input_ids"]).all()
            same += int((c[SAMPLED_IDS] == gpu[key][SAMPLED_IDS]).sum())
            total += c[SAMPLED_IDS].size
    assert same / total > 0.9, same / total


def test_student_trains_on_the_gpu_under_bf16_with_fused_adamw(tmp_path, tiny_cache):
    from pipeline.student_loop import StudentLoop, accelerator

    assert accelerator().mixed_precision == ("bf16" if torch.cuda.is_bf16_supported() else "no")
    fused = []
    real = StudentLoop.fit

    def spy(self):
        fused.append(self.optimizer.optimizer.defaults.get("fused"))
        return real(self)

    StudentLoop.fit = spy
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    cfg = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=2)
    try:
        result = distill_student(tiny_cache, tmp_path / "s", spec, cfg, seed=0)
    finally:
        StudentLoop.fit = real
    losses = [h["loss"] for h in result["history"] if "loss" in h]
    assert fused == [True] and losses and all(np.isfinite(losses)) and (tmp_path / "s" / "model.safetensors").is_file()


def test_a_compiled_student_on_token_budget_batches_learns_like_the_eager_one(tmp_path, tiny_cache):
    """distill.compile + distill.batch_tokens on the GPU: torch.compile's student follows the eager one's losses
    (dropout draws differ under compile, so closely, not exactly) and saves a loadable model."""
    from pipeline.distill import distill_seeds

    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    losses = {}
    for compiled in (False, True):
        cfg = DistillConfig(epochs=2, batch_size=64, batch_tokens=1024, learning_rate=5e-4, logging_steps=1, compile=compiled)
        history = distill_seeds(tiny_cache, tmp_path / str(compiled), spec, cfg, seeds=[0])["history"]
        losses[compiled] = np.array([h["loss"] for h in history if "loss" in h])
    assert len(losses[True]) == len(losses[False]) > 3
    np.testing.assert_allclose(losses[True], losses[False], rtol=0.05)
    assert transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "True") is not None
