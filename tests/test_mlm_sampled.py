"""Sampled masked-LM logits (random-sampling KD): ids drawn from the teacher's softmax are an unbiased estimate of its
distribution, the KL on them has the full KL's gradient in expectation, the draws do not depend on batching, and the
cache, the student and the scorer handle them (and refuse a student that would read them at another temperature)."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM

from pipeline.cache import TeacherCache
from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_student
from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate_saved_model
from pipeline.losses import kd_kl_loss, sampled_kd_loss
from pipeline.mlm import SAMPLED_IDS, TOPK_VALUES, expected_calibration_error, sample_uniforms, sample_vocabulary
from pipeline.tasks.masked_lm import MaskedLMConfig
from tests.conftest import build_mlm_cache

SAMPLED = dict(logits="sampled", samples=16, sample_temperature=1.0)


def _draws(logits: torch.Tensor, n: int, k: int, temperature: float, seed: int = 0) -> torch.Tensor:
    """n independent sets of k draws for one token (one example id each)."""
    uniforms = sample_uniforms(np.arange(n), np.ones((n, 1), dtype=bool), seed, k)
    return sample_vocabulary(logits.expand(n, -1), torch.from_numpy(uniforms), temperature).long()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_draws_frequencies_are_unbiased_for_the_teachers_distribution(temperature):
    logits = torch.tensor([[3.0, 1.0, 0.5, 0.0, -1.0, -4.0]])
    draws = _draws(logits, 4000, 16, temperature)
    frequencies = torch.nn.functional.one_hot(draws, 6).float().mean(dim=(0, 1))
    expected = torch.softmax(logits[0] / temperature, -1)
    assert torch.allclose(frequencies, expected, atol=0.01), (frequencies, expected)
    assert (draws.diff(dim=-1) >= 0).all()  # each token's draws are stored sorted


def test_the_sampled_kl_gradient_is_unbiased_for_the_full_kl_gradient():
    torch.manual_seed(0)
    teacher, student = torch.randn(1, 7) * 2, torch.randn(1, 7)
    n, temperature = 3000, 2.0
    draws = _draws(teacher, n, 8, temperature, seed=1)
    logits = student.expand(n, -1).clone().requires_grad_(True)
    sampled_kd_loss(logits, draws, torch.ones(n, dtype=torch.bool), temperature).backward()
    mean_grad = logits.grad.sum(0)  # the loss averages over the n sets, so the sum of the rows' grads is their mean
    full = student.clone().requires_grad_(True)
    kd_kl_loss(full, teacher, temperature).backward()
    assert torch.allclose(mean_grad, full.grad[0], atol=0.03), (mean_grad, full.grad[0])


def test_the_sampled_kl_by_hand():
    """draws (0, 0, 1, 3): p_hat = (1/2, 1/4, 0, 1/4); KL = sum p_hat (log p_hat - log q), >= 0."""
    student = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    draws = torch.tensor([[0, 0, 1, 3]])
    log_q = torch.log_softmax(student[0], -1)
    p_hat = torch.tensor([0.5, 0.25, 0.0, 0.25])
    expected = sum(p * (np.log(p) - log_q[v]) for v, p in enumerate(p_hat.tolist()) if p > 0)
    got = sampled_kd_loss(student, draws, torch.ones(1, dtype=torch.bool), 1.0)
    assert got.item() == pytest.approx(float(expected), abs=1e-5) and got.item() >= 0
    assert sampled_kd_loss(student, draws, torch.zeros(1, dtype=torch.bool), 1.0).item() == 0.0


def test_the_draws_do_not_depend_on_batching():
    """A row's uniforms are a function of (seed, example id, position, draw): alone or in a wider padded batch."""
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    together = sample_uniforms(np.array([7, 9]), mask, seed=3, draws=4)
    alone = sample_uniforms(np.array([7]), mask[:1, :3], seed=3, draws=4)
    assert np.array_equal(together[:3], alone) and together.shape == (8, 4)
    assert not np.array_equal(sample_uniforms(np.array([7]), mask[:1, :3], seed=4, draws=4), alone)
    assert len(np.unique(together)) == together.size  # no two draws share a uniform


def test_expected_calibration_error_by_hand():
    # bin 0.9: accuracy 0.5 at confidence 0.9 (gap 0.4); bin 0.1: accuracy 0 at 0.1 (gap 0.1); each half the tokens
    confidence, correct = np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0], dtype=bool)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.25)
    assert expected_calibration_error(np.array([0.75, 0.75]), np.array([1, 1], dtype=bool)) == pytest.approx(0.25)


@pytest.fixture(scope="module")
def sharp_teacher(tmp_path_factory, mlm_teacher):
    """The random masked LM with a peaked vocabulary bias: a distribution 16 draws can describe (a random head's is
    nearly uniform over the vocabulary, so its draws are almost all distinct)."""
    out = tmp_path_factory.mktemp("sharp_teacher")
    model = AutoModelForMaskedLM.from_pretrained(mlm_teacher)
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.randn(model.config.vocab_size, generator=torch.Generator().manual_seed(0)) * 3)
    model.save_pretrained(out)
    for f in mlm_teacher.iterdir():
        if "token" in f.name or f.name == "vocab.txt":
            (out / f.name).write_bytes(f.read_bytes())
    return out


@pytest.fixture(scope="module")
def sampled_cache(tmp_path_factory, sharp_teacher, tiny_prepared):
    out = tmp_path_factory.mktemp("sampled") / "cache"
    build_mlm_cache(sharp_teacher, tiny_prepared, out, **SAMPLED)
    return out


def test_a_sampled_cache_holds_the_teachers_draws_at_two_bytes_each(sampled_cache, sharp_teacher):
    cache = TeacherCache(sampled_cache, verify="full")
    m = cache.manifest
    assert m["logits"] == "sampled" and m["samples"] == 16 and m["sample_temperature"] == 1.0 and "topk" not in m
    fields = {f.name: f for f in cache.fields}
    assert TOPK_VALUES not in fields and fields[SAMPLED_IDS].dtype == "uint16" and fields[SAMPLED_IDS].width == 16
    teacher = AutoModelForMaskedLM.from_pretrained(sharp_teacher).eval()
    dev = cache.split("dev")
    for i in range(0, len(dev), 7):  # the cached draws are the teacher's own, redrawn here from its logits
        row = dev[i]
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor(row["input_ids"][None].astype(np.int64))).logits[0]
        mask = np.ones((1, len(row["input_ids"])), dtype=bool)
        uniforms = torch.from_numpy(sample_uniforms(np.array([row["example_id"]]), mask, m["masking"]["seed"], 16))
        redrawn = sample_vocabulary(logits, uniforms, 1.0).numpy()
        assert (redrawn == row[SAMPLED_IDS].astype(np.int64)).mean() > 0.99  # fp32 CDF rounding may move a boundary


def test_a_student_learns_from_sampled_ids_and_is_scored_with_calibration(tmp_path, sampled_cache, sharp_teacher):
    spec = StudentSpec(num_layers=2, hidden_size=32, num_heads=4, init="random")
    cfg = DistillConfig(epochs=6, batch_size=16, learning_rate=2e-3, alpha=0.0, beta=1.0, gamma=0.0, temperature=1.0)
    every_token = MaskedLMConfig(mlm_positions="all", **SAMPLED)
    kwargs = dict(batch_size=64, latency_batch_sizes=[1], latency_repeats=2)
    untrained = dataclasses.replace(cfg, epochs=0.01)
    distill_student(sampled_cache, tmp_path / "before", spec, untrained, seed=0, task_config=every_token)
    result = distill_student(sampled_cache, tmp_path / "student", spec, cfg, seed=0, task_config=every_token)
    kl = [h["loss_kl"] for h in result["history"] if "loss_kl" in h]
    assert kl and all(np.isfinite(kl)) and all(v >= 0 for v in kl)
    after = evaluate_saved_model(tmp_path / "student", sampled_cache, **kwargs)
    assert 0 <= after["ece"] <= 1 and after["masked_tokens"] > 0 and 0 <= after["teacher_agreement"] <= 1
    # the student moved toward the teacher's whole distribution, which it only saw as 16 draws per token
    assert _kl_to_teacher(tmp_path / "student", sharp_teacher, sampled_cache) < 0.5 * _kl_to_teacher(
        tmp_path / "before", sharp_teacher, sampled_cache
    )


@torch.no_grad()
def _kl_to_teacher(student_dir, teacher_dir, cache_dir) -> float:
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForMaskedLM.from_pretrained(student_dir).eval()
    dev = TeacherCache(cache_dir).split("dev")
    kls = []
    for i in range(len(dev)):
        ids = torch.tensor(dev[i]["input_ids"][None].astype(np.int64))
        kls.append(float(kd_kl_loss(student(input_ids=ids).logits[0], teacher(input_ids=ids).logits[0], 1.0)))
    return float(np.mean(kls))


def test_a_student_at_another_temperature_or_expecting_topk_is_refused(tmp_path, sampled_cache):
    spec = StudentSpec(num_layers=1, hidden_size=32, num_heads=4, init="random")
    cfg = DistillConfig(epochs=1, batch_size=16, alpha=0.5, beta=0.5, gamma=0.0, temperature=2.0)
    with pytest.raises(PipelineError, match="drawn at temperature 1.0.*distill.temperature 2.0.*set distill.temperature: 1.0"):
        distill_student(sampled_cache, tmp_path / "s", spec, cfg, seed=0, task_config=MaskedLMConfig(**SAMPLED))
    decaying = dataclasses.replace(cfg, temperature=1.0, temperature_end=0.5)
    with pytest.raises(PipelineError, match="decaying to 0.5"):
        distill_student(sampled_cache, tmp_path / "s", spec, decaying, seed=0, task_config=MaskedLMConfig(**SAMPLED))
    with pytest.raises(PipelineError, match="holds sampled vocabulary logits.*masked_lm.logits: topk"):
        distill_student(sampled_cache, tmp_path / "s", spec, cfg, seed=0, task_config=MaskedLMConfig())
    # no KL (beta 0): the draws are not read, so any temperature trains
    hard = dataclasses.replace(cfg, beta=0.0, alpha=1.0, epochs=0.05)
    distill_student(sampled_cache, tmp_path / "hard", spec, hard, seed=0, task_config=MaskedLMConfig(**SAMPLED))
