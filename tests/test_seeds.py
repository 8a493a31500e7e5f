"""Seed spread: a student trained under several seeds, each run saved, evaluated and summarised as mean ± std;
speedups timed interleaved against a teacher-shaped model."""

import json
import shutil
import statistics

import pytest
import torch

from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_seeds
from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate_ensemble, evaluate_saved_model, teacher_shaped_model
from pipeline.latency import paired_latency_ms
from pipeline.models import seed_model_dirs
from pipeline.params import params_from_dict

FAST = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=2)
SPEC = StudentSpec(num_layers=1, hidden_size=16, num_heads=2, init="random")


def _params(**distill):
    return params_from_dict(
        {
            "students": {
                "a": {"num_layers": 1, "hidden_size": 16},
                "b": {"num_layers": 1, "hidden_size": 16, "seeds": 2, "seed": 7},
            },
            "distill": distill,
            "seed": 3,
        }
    )


def test_seeds_are_counted_from_the_seed_and_overridable_per_student():
    params = _params(seeds=3)
    assert params.seeds_for("a") == [3, 4, 5] and params.seeds_for("b") == [7, 8]
    assert _params().seeds_for("a") == [3]
    with pytest.raises(PipelineError, match="'distill.seeds' must be > 0"):
        _params(seeds=0)
    with pytest.raises(PipelineError, match="'distill.seeds' must be an integer"):
        _params(seeds=[1, 2])


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory, tiny_cache):
    out = tmp_path_factory.mktemp("seeds") / "s"
    (out / "seeds" / "99").mkdir(parents=True)  # a stale run of an earlier seed list must not survive
    result = distill_seeds(tiny_cache, out, SPEC, FAST, seeds=[5, 6, 7])
    return out, result


def test_each_seed_is_its_own_run_and_the_first_is_shipped(three_seeds, tmp_path, tiny_cache):
    out, result = three_seeds
    assert [s for s, _ in seed_model_dirs(out)] == [5, 6, 7]
    assert not (out / "seeds" / "99").exists() and json.loads((out / "distill.json").read_text()) == {
        "seed": 5,
        "seeds": [5, 6, 7],
    }
    weights = [(d / "model.safetensors").read_bytes() for _, d in seed_model_dirs(out)]
    assert len(set(weights)) == 3  # three different runs
    single = tmp_path / "single"
    distill_seeds(tiny_cache, single, SPEC, FAST, seeds=[6])
    assert (single / "model.safetensors").read_bytes() == weights[1]  # seed 6 alone gives the same model as seed 6 of three
    summary = result["summary"]
    assert summary["seeds"] == [5, 6, 7] and [r["seed"] for r in summary["seed_runs"]] == [5, 6, 7]
    assert summary["seconds_mean"] == pytest.approx(statistics.mean(r["seconds"] for r in summary["seed_runs"]), abs=0.06)


def test_evaluate_gives_each_seed_and_mean_and_sample_std(three_seeds, tiny_cache):
    out, _ = three_seeds
    m = evaluate_saved_model(out, tiny_cache, batch_size=32, latency_batch_sizes=[], latency_repeats=1)
    alone = [
        evaluate_saved_model(d, tiny_cache, batch_size=32, latency_batch_sizes=[], latency_repeats=1)["accuracy"]
        for _, d in seed_model_dirs(out)[1:]
    ]
    assert m["seeds"] == [5, 6, 7] and m["accuracy_per_seed"] == pytest.approx([m["accuracy"], *alone], abs=1e-6)
    assert m["accuracy_mean"] == pytest.approx(statistics.mean(m["accuracy_per_seed"]), abs=1e-6)
    assert m["accuracy_std"] == pytest.approx(statistics.stdev(m["accuracy_per_seed"]), abs=1e-6)


def test_a_missing_seed_run_is_named(three_seeds, tmp_path, tiny_cache):
    out, _ = three_seeds
    copy = tmp_path / "s"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "seeds" / "6")
    with pytest.raises(PipelineError, match=r"distill.json: lists seed runs that are not on disk .*seeds/6.*dvc repro distill"):
        evaluate_saved_model(copy, tiny_cache, batch_size=32, latency_batch_sizes=[], latency_repeats=1)


def test_ensemble_of_seeded_members_scores_each_seed_index(three_seeds, tmp_path, tiny_cache):
    out, _ = three_seeds
    other = tmp_path / "o"
    distill_seeds(tiny_cache, other, SPEC, FAST, seeds=[11, 12])
    m = evaluate_ensemble([out, other], tiny_cache, batch_size=32, latency_batch_sizes=[], latency_repeats=1)
    assert m["seeds"] == [[5, 11], [6, 12]] and len(m["accuracy_per_seed"]) == 2  # as many as the smaller member has
    assert m["accuracy_per_seed"][0] == pytest.approx(m["accuracy"], abs=1e-6)


def test_speedup_is_timed_against_a_teacher_shaped_model(tiny_teacher, tiny_cache, three_seeds):
    ref = teacher_shaped_model(tiny_cache, 2)
    teacher_cfg = json.loads((tiny_teacher / "config.json").read_text())
    assert (
        ref.config.num_hidden_layers == teacher_cfg["num_hidden_layers"] and ref.config.hidden_size == teacher_cfg["hidden_size"]
    )
    real = type(ref).from_pretrained(tiny_teacher)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in real.parameters())
    out, _ = three_seeds
    m = evaluate_saved_model(
        out, tiny_cache, batch_size=32, latency_batch_sizes=[4], latency_repeats=5, against_teacher_shape=True
    )
    assert m["speedup_b4"] == pytest.approx(m["teacher_shaped_latency_ms_b4"] / m["latency_ms_b4"], rel=0.01)


class _FakeClock:
    """Stands in for time.perf_counter: time moves only when a model says it ran (no sleeping, no load flakes)."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self):
        return self.now


class _Timed(torch.nn.Module):
    """A model whose forward takes `ms` on the fake clock (`first_ms` the first time: a warm-up pass), and logs its call."""

    def __init__(self, name, clock, ms, first_ms=None):
        super().__init__()
        self.name, self.clock, self.ms, self.first_ms = name, clock, ms, first_ms

    def forward(self, input_ids, attention_mask):
        self.clock.calls.append(self.name)
        self.clock.now += (
            self.first_ms if self.first_ms is not None and self.clock.calls.count(self.name) == 1 else self.ms
        ) / 1000


def test_paired_latency_times_each_model_interleaved_after_untimed_warmup(monkeypatch):
    from pipeline import latency

    clock = _FakeClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    tokens = [torch.arange(5).numpy()] * 8
    models = [_Timed("fast", clock, 2.0, first_ms=500.0), _Timed("slow", clock, 8.0, first_ms=900.0)]
    fast, slow = paired_latency_ms(models, tokens, batch_size=4, repeats=5, warmup=1)
    assert (fast, slow) == (pytest.approx(2.0), pytest.approx(8.0))  # the slow warm-up passes are not counted
    assert clock.calls == ["fast", "slow"] * 6  # interleaved: A, B, A, B, ... (1 warm-up + 5 timed each)
