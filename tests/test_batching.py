"""Token-budget training batches (`distill.batch_tokens`): within both limits, every row once per epoch, the same
batches for the same seed and epoch, and a student trained on them the same twice over."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.batching import TokenBudgetBatchSampler
from pipeline.config import DistillConfig, StudentSpec
from pipeline.errors import PipelineError
from pipeline.params import params_from_dict

SST2_TRAIN = Path(__file__).resolve().parents[1] / "data/raw/sst2/train.tsv"


def _sst2_lengths(n: int = 8000) -> np.ndarray:
    """Word counts + 2 of real SST-2 rows: the long tail of short phrases and the few long sentences."""
    lines = SST2_TRAIN.read_text().splitlines()[1 : n + 1]
    return np.array([len(line.split("\t")[1].split()) + 2 for line in lines])


def _epoch(sampler: TokenBudgetBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("budget,max_rows", [(512, 64), (2048, 256), (2048, 32), (70, 1000)])
def test_batches_keep_both_limits_and_hold_every_row_once(budget, max_rows):
    lengths = _sst2_lengths()
    sampler = TokenBudgetBatchSampler(lengths, budget, max_rows, seed=3)
    for epoch in range(3):
        batches = _epoch(sampler, epoch)
        assert len(batches) == len(sampler)  # the count the Trainer plans its steps and schedule with
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            padded = len(b) * lengths[b].max()
            assert len(b) <= max_rows and (padded <= budget or len(b) == 1), (len(b), padded)


def test_batches_are_a_function_of_seed_and_epoch():
    lengths = _sst2_lengths(3000)
    a = TokenBudgetBatchSampler(lengths, 1024, 128, seed=7)
    b = TokenBudgetBatchSampler(lengths, 1024, 128, seed=7)
    assert _epoch(a, 1) == _epoch(b, 1)  # a resumed run (a fresh sampler set to epoch 1) sees the same batches
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 0) != _epoch(a, 1)  # each epoch draws anew
    assert _epoch(a, 0) != _epoch(TokenBudgetBatchSampler(lengths, 1024, 128, seed=8), 0)
    # not just the order of the same batches: rows of equal length are drawn into different batches
    assert sorted(map(sorted, _epoch(a, 0))) != sorted(map(sorted, _epoch(a, 1)))


def test_batches_fill_the_budget_with_little_padding():
    lengths = _sst2_lengths()
    sampler = TokenBudgetBatchSampler(lengths, 4096, 4096, seed=0)
    batches = _epoch(sampler, 0)
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    assert real / padded > 0.93  # as little as length-grouped batches of 32 rows waste (95% real here)
    full = [len(b) * int(lengths[b].max()) / 4096 for b in batches[:-1]]
    assert np.median(full) > 0.9
    rows = [len(b) for b in batches]
    assert max(rows) > 10 * min(rows)  # many short rows to a batch, few long ones


def test_a_student_on_token_budget_batches_trains_the_same_twice(tmp_path, tiny_cache, monkeypatch):
    from pipeline import collate
    from pipeline.distill import distill_seeds

    shapes = []
    call = collate.CacheCollator.__call__

    def recording(self, rows):
        batch = call(self, rows)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    monkeypatch.setattr(collate.CacheCollator, "__call__", recording)
    cfg = DistillConfig(epochs=2, batch_size=64, batch_tokens=160, learning_rate=5e-4, logging_steps=2)
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    digests, runs = [], []
    for run in ("a", "b"):
        shapes.clear()
        summary = distill_seeds(tiny_cache, tmp_path / run, spec, cfg, seeds=[0])["summary"]
        digests.append(hashlib.sha256((tmp_path / run / "model.safetensors").read_bytes()).hexdigest())
        runs.append(list(shapes))
        assert len(summary["eval_accuracy_per_epoch"]) == 2
    assert digests[0] == digests[1] and runs[0] == runs[1]
    train = [s for s in runs[0] if s[0] * s[1] <= 160 or s[0] == 1]
    assert len(train) >= len(runs[0]) // 2  # the evaluation batches (64 rows) are the rest
    assert len({s[0] for s in train}) > 2  # batch rows vary with the rows' length


def test_a_budget_below_one_row_per_process_is_refused_with_the_key():
    student = {"s": {"num_layers": 2, "hidden_size": 64}}
    raw = {"data": {"max_length": 64}, "distill": {"batch_tokens": 100, "nproc": 2}, "students": student}
    with pytest.raises(PipelineError, match=r"'distill.batch_tokens' 100 .* at least 128"):
        params_from_dict(raw)
    raw = {"data": {"max_length": 64}, "students": {"s": {"num_layers": 2, "hidden_size": 64, "batch_tokens": 32}}}
    with pytest.raises(PipelineError, match=r"'students.s.batch_tokens' 32"):
        params_from_dict(raw)
    ok = params_from_dict({"data": {"max_length": 64}, "distill": {"batch_tokens": 4096}, "students": student})
    assert ok.distill.batch_tokens == 4096


def test_compile_reaches_the_training_step_and_stays_off_by_default(tiny_cache, tmp_path, monkeypatch):
    """The compiled student's training itself runs in tests/test_gpu.py (inductor on 2 CPU cores takes minutes)."""
    from pipeline.distill import distill_student

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: compiled.append(type(model).__name__) or model)
    spec = StudentSpec(num_layers=1, hidden_size=16, num_heads=2, init="random")
    for flag in (True, False):
        cfg = DistillConfig(epochs=0.1, batch_size=16, compile=flag)
        distill_student(tiny_cache, tmp_path / str(flag), spec, cfg, seed=0)
    assert compiled == ["DistillationModule"]
