"""Stage two from the cache alone: no teacher directory, projections for other widths, saved students load anywhere."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from pipeline.cache import TeacherCache
from pipeline.collate import CacheCollator
from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_student
from pipeline.errors import PipelineError
from pipeline.evaluation import compare_to_teacher, evaluate_saved_model
from pipeline.layers import hidden_layer_pairs
from pipeline.scoring import classification_metrics
from tests.conftest import build_cache, make_tiny_teacher

FAST = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=2)


def test_hidden_layer_pairs_keep_only_cached_teacher_layers():
    assert hidden_layer_pairs(2, 4, [2, 4]) == [(1, 2), (2, 4)]
    assert hidden_layer_pairs(3, 6, [2, 4, 6]) == [(1, 2), (2, 4), (3, 6)]
    assert hidden_layer_pairs(3, 6, [6]) == [(3, 6)]


def test_collator_pads_per_batch_and_restores_teacher_values(tiny_cache):
    split = TeacherCache(tiny_cache).split("train", ["logits", "hidden_2"])
    rows = [split[i] for i in (0, 5, len(split) - 1)]
    batch = CacheCollator([2])(rows)
    width = max(r["length"] for r in rows)
    assert batch["input_ids"].shape == (3, width) and batch["teacher_hidden_2"].shape == (3, width, 32)
    for i, r in enumerate(rows):
        assert batch["attention_mask"][i].sum() == r["length"]
        assert torch.equal(batch["teacher_hidden_2"][i, : r["length"]], torch.from_numpy(r["hidden_2"].astype(np.float32)))
        assert not batch["teacher_hidden_2"][i, r["length"] :].any()


def test_distill_runs_with_the_teacher_deleted_and_the_student_loads_in_a_pipeline(tmp_path, sst2_small, tiny_prepared):
    teacher = make_tiny_teacher(tmp_path / "teacher", sst2_small)
    build_cache(teacher, tiny_prepared, tmp_path / "cache")
    shutil.rmtree(teacher)  # stage two must not need it
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    result = distill_student(
        tmp_path / "cache", tmp_path / "student", spec, FAST, seed=0, max_length=32, label_names=["negative", "positive"]
    )
    summary = result["summary"]
    assert summary["layer_pairs"] == [[1, 2], [2, 4]] or summary["layer_pairs"] == [(1, 2), (2, 4)]
    assert summary["trained_params"] == summary["params"] + 2 * (16 * 32 + 32)  # two learned 16->32 projections
    losses = [h for h in result["history"] if "loss_hidden" in h]
    assert losses and all(np.isfinite(h["loss"]) for h in losses)
    clf = transformers.pipeline("text-classification", model=str(tmp_path / "student"), device="cpu")
    out = clf("a gorgeous , witty , seductive movie .")
    assert out[0]["label"] in ("negative", "positive")
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2 and saved["hidden_size"] == 16


def test_student_learns_from_soft_labels_alone(tmp_path, tiny_teacher, tiny_prepared):
    """alpha=0: the student only sees the teacher's logits; it must end up agreeing with the teacher far above chance."""
    cache = tmp_path / "cache"
    build_cache(tiny_teacher, tiny_prepared, cache)
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    cfg = DistillConfig(epochs=3, batch_size=16, learning_rate=1e-3, alpha=0.0, beta=1.0, gamma=0.0, temperature=1.0)
    distill_student(cache, tmp_path / "student", spec, cfg, seed=0, teacher_dir=tiny_teacher)
    student = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    dev = TeacherCache(cache).split("dev")
    agree = []
    with torch.no_grad():
        for i in range(len(dev)):
            row = dev[i]
            logits = student(input_ids=torch.tensor(row["input_ids"][None].astype(np.int64))).logits[0]
            agree.append(int(logits.argmax()) == int(row["logits"].argmax()))
    assert np.mean(agree) >= 0.8


def test_cache_mismatch_is_refused_before_training(tiny_cache, tmp_path):
    spec = StudentSpec(num_layers=2, hidden_size=32, init="random", num_heads=4)
    with pytest.raises(PipelineError, match="cache max_length is 32 but data.max_length is 64"):
        distill_student(tiny_cache, tmp_path / "s", spec, FAST, seed=0, max_length=64)
    with pytest.raises(PipelineError, match="cache labels are"):
        distill_student(tiny_cache, tmp_path / "s", spec, FAST, seed=0, label_names=["bad", "good"])
    assert not (tmp_path / "s").exists()


def test_no_cached_layer_pairs_with_gamma_is_refused(tmp_path, tiny_teacher, tiny_prepared):
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "cache", layers=[1])
    spec = StudentSpec(num_layers=2, hidden_size=32, init="random", num_heads=4)
    with pytest.raises(PipelineError, match=r"no cached teacher layer pairs .*cache has \[1\]"):
        distill_student(tmp_path / "cache", tmp_path / "s", spec, FAST, seed=0)


def test_evaluate_reports_quality_size_latency_and_retention(tiny_teacher, tiny_cache):
    result = evaluate_saved_model(tiny_teacher, tiny_cache, batch_size=32, latency_batch_sizes=[1, 4], latency_repeats=3)
    assert 0 <= result["accuracy"] <= 1 and result["dev_rows"] == 80
    assert result["params"] > 0 and result["size_mb"] > 0 and result["latency_ms_b1"] > 0 and result["latency_ms_b4"] > 0
    cmp = compare_to_teacher({**result, "accuracy": result["accuracy"] / 2, "latency_ms_b1": result["latency_ms_b1"] / 4}, result)
    assert cmp["retention"] == pytest.approx(0.5, abs=1e-3) and cmp["speedup_b1"] == pytest.approx(4, rel=1e-2)


def test_classification_metrics_golden():
    m = classification_metrics(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 2)
    # class 0: tp1 fp1 fn1 -> F1 0.5; class 1: tp2 fp1 fn1 -> F1 2/3
    assert m["accuracy"] == pytest.approx(0.6) and m["f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_teacher_init_checks_the_teacher_against_the_cache(tmp_path, sst2_small, tiny_teacher, tiny_cache):
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    other = make_tiny_teacher(tmp_path / "other", sst2_small, seed=1)  # same shape, different weights
    with pytest.raises(PipelineError, match="not the ones the cache was extracted with; `dvc pull artifacts/teacher`"):
        distill_student(tiny_cache, tmp_path / "s", spec, FAST, seed=0, teacher_dir=other)
    with pytest.raises(PipelineError, match="teacher weights needed for init 'teacher' are missing"):
        distill_student(tiny_cache, tmp_path / "s", spec, FAST, seed=0, teacher_dir=tmp_path / "nowhere")


def test_same_seed_gives_bit_identical_students_and_metrics(tmp_path, tiny_cache):
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    runs = []
    for name in ("a", "b"):
        distill_student(tiny_cache, tmp_path / name, spec, FAST, seed=3)
        metrics = evaluate_saved_model(tmp_path / name, tiny_cache, batch_size=32, latency_batch_sizes=[], latency_repeats=1)
        runs.append(((tmp_path / name / "model.safetensors").read_bytes(), metrics["accuracy"], metrics["f1"]))
    assert runs[0] == runs[1]
    distill_student(tiny_cache, tmp_path / "c", spec, FAST, seed=4)
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != runs[0][0]


def test_online_kd_baseline_sees_the_same_teacher_outputs_as_the_cache(tiny_teacher, tiny_cache):
    """The online module's teacher call reproduces what the cache stored, so P3 compares like with like."""
    from pipeline.kd import DistillationModule, OnlineDistillationModule
    from pipeline.layers import LayerPlan

    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    student = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=teacher.config.vocab_size,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=128,
            num_labels=2,
        )
    )
    cfg = DistillConfig(alpha=0.5, beta=0.5, gamma=1.0, temperature=2.0)
    online = OnlineDistillationModule(student, teacher, cfg, [(1, 2), (2, 4)]).train()
    assert not online.teacher.training and not any(p.requires_grad for p in online.teacher.parameters())
    offline = DistillationModule(student, cfg, LayerPlan([(1, 2), (2, 4)], 32)).train()
    offline.projections = online.projections
    split = TeacherCache(tiny_cache).split("train", ["logits", "hidden_2", "hidden_4"])
    batch = CacheCollator([2, 4])([split[i] for i in range(8)])
    torch.manual_seed(0)
    student.eval()  # no dropout in the student either: the two losses must agree up to fp16 storage of the cache
    got = online(batch["input_ids"], batch["attention_mask"], batch["labels"])["loss"]
    want = offline(**batch)["loss"]
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3)


def test_layer_maps_uniform_last_and_explicit():
    assert hidden_layer_pairs(3, 6, [2, 4, 6], "last") == [(3, 6)]
    assert hidden_layer_pairs(3, 6, [2, 6], "last") == [(3, 6)]
    assert hidden_layer_pairs(3, 6, [2, 4], "last") == []
    assert hidden_layer_pairs(2, 6, [0, 2, 4, 6], "uniform", [[0, 0], [2, 6]]) == [(0, 0), (2, 6)]
    with pytest.raises(PipelineError, match=r"layer pair \[3, 6\] is out of range: the student has layers 0..2"):
        hidden_layer_pairs(2, 6, [6], "uniform", [[3, 6]])


def test_explicit_pairs_need_their_teacher_layers_cached(tiny_cache, tmp_path):
    spec = StudentSpec(num_layers=2, hidden_size=32, init="random", num_heads=4)
    cfg = DistillConfig(epochs=1, batch_size=16, layer_pairs=[[0, 0], [2, 4]])
    with pytest.raises(
        PipelineError, match=r"teacher layers \[0\] are needed but the cache holds \[2, 4\]; add them to extract.layers"
    ):
        distill_student(tiny_cache, tmp_path / "s", spec, cfg, seed=0)


def test_cosine_soft_ce_and_decaying_temperature_train_end_to_end(tiny_cache, tmp_path):
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    cfg = DistillConfig(
        epochs=2,
        batch_size=16,
        logging_steps=2,
        logit_loss="soft_ce",
        hidden_loss="cosine",
        temperature=4.0,
        temperature_end=1.0,
        layer_map="last",
    )
    result = distill_student(tiny_cache, tmp_path / "s", spec, cfg, seed=0)
    logs = [h for h in result["history"] if "loss_soft_ce" in h]
    temps = [h["temperature"] for h in logs]
    assert len(logs) >= 5 and "loss_hidden" in logs[0] and "loss_kl" not in logs[0]
    assert temps == sorted(temps, reverse=True) and temps[0] <= 4.0 and 1.0 <= temps[-1] < 1.5
    assert result["summary"]["layer_pairs"] == [(2, 4)]


def test_step_schedule_warms_up_then_steps_down():
    from pipeline.student_loop import step_schedule

    f = step_schedule(warmup_steps=10, total_steps=90, stages=3, gamma=0.5)
    assert [f(0), f(5), f(10)] == [0.0, 0.5, 1.0]
    assert [f(29), f(30), f(59), f(60), f(89)] == [1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize(
    "optimizer, scheduler, cls", [("adam", "step", "Adam"), ("sgd", "cosine", "SGD"), ("adamw", "linear", "AdamW")]
)
def test_optimizers_and_schedulers_are_the_ones_asked_for(tiny_cache, tmp_path, optimizer, scheduler, cls, monkeypatch):
    from pipeline.student_loop import StudentLoop

    seen = {}
    real = StudentLoop.fit

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        seen["optimizer"] = type(self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer).__name__
        seen["lrs"] = [h["learning_rate"] for h in self.state.log_history if "learning_rate" in h]
        seen["clip"] = self.cfg.max_grad_norm
        seen["grad_norms"] = [h["grad_norm"] for h in self.state.log_history if "grad_norm" in h]
        return out

    monkeypatch.setattr(StudentLoop, "fit", spy)
    spec = StudentSpec(num_layers=1, hidden_size=16, num_heads=2, init="random")
    cfg = DistillConfig(
        epochs=3,
        batch_size=16,
        logging_steps=1,
        warmup_ratio=0.0,
        optimizer=optimizer,
        scheduler=scheduler,
        max_grad_norm=0.5,
        learning_rate=1e-3,
    )
    distill_student(tiny_cache, tmp_path / "s", spec, cfg, seed=0)
    assert seen["optimizer"] == cls and seen["clip"] == 0.5 and len(seen["grad_norms"]) == len(seen["lrs"])
    lrs = seen["lrs"]
    if scheduler == "step":
        assert sorted(set(round(x, 8) for x in lrs), reverse=True) == [1e-3, 5e-4, 2.5e-4]
    else:
        assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0] / 5


def test_attention_and_value_relation_losses_train_from_the_cache(tmp_path, tiny_teacher, tiny_prepared):
    cache = tmp_path / "cache"
    build_cache(tiny_teacher, tiny_prepared, cache, attentions=[2, 4], values=[4])
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    cfg = DistillConfig(
        epochs=4,
        batch_size=16,
        logging_steps=2,
        learning_rate=1e-3,
        alpha=0.0,
        beta=0.0,
        gamma=0.0,
        attention_weight=1.0,
        value_weight=1.0,
    )
    result = distill_student(cache, tmp_path / "s", spec, cfg, seed=0, teacher_dir=tiny_teacher)
    logs = [h for h in result["history"] if "loss_attention" in h]
    assert logs and all(np.isfinite(h["loss_attention"]) and np.isfinite(h["loss_value"]) for h in logs)
    assert result["summary"]["attention_pairs"] == [(1, 2), (2, 4)] and result["summary"]["value_pair"] == (2, 4)
    # trained on these two terms alone, the student's attention and value relations move towards the teacher's
    assert np.mean([h["loss_attention"] for h in logs[-3:]]) < 0.7 * np.mean([h["loss_attention"] for h in logs[:3]])
    assert np.mean([h["loss_value"] for h in logs[-3:]]) < 0.7 * np.mean([h["loss_value"] for h in logs[:3]])
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert saved.get("_attn_implementation", saved.get("attn_implementation", "sdpa")) in ("sdpa", None)
    transformers.pipeline("text-classification", model=str(tmp_path / "s"), device="cpu")("a fine film")


def test_attention_loss_needs_cached_maps_and_equal_heads(tmp_path, tiny_teacher, tiny_prepared, tiny_cache):
    spec = StudentSpec(num_layers=2, hidden_size=32, init="random", num_heads=4)
    with pytest.raises(PipelineError, match=r"no cached teacher attention layer pairs .* add layers to extract.attentions"):
        distill_student(tiny_cache, tmp_path / "s", spec, DistillConfig(epochs=1, attention_weight=1.0), seed=0)
    with pytest.raises(PipelineError, match=r"teacher values of layers \[4\] are needed but the cache holds \[\]"):
        distill_student(tiny_cache, tmp_path / "s", spec, DistillConfig(epochs=1, value_weight=1.0), seed=0)
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "att", attentions=[4])
    two_heads = StudentSpec(num_layers=2, hidden_size=32, init="random", num_heads=2)
    with pytest.raises(PipelineError, match="the student has 2 heads, the teacher 4"):
        distill_student(tmp_path / "att", tmp_path / "s", two_heads, DistillConfig(epochs=1, attention_weight=1.0), seed=0)
