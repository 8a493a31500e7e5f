"""Multi-task distillation: the batch mix across tasks (deterministic, matching the weights over an epoch), one tiny
student trained from an SST-2 cache and a CoNLL cache with no teacher in memory, its per-task checkpoints read back
with plain transformers, each task's loss equal to the single-task loss, and the mistakes a user can make."""

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
)

from pipeline.config import DistillConfig, ExtractConfig
from pipeline.distill import prepare_run
from pipeline.errors import PipelineError
from pipeline.extract import extract_cache
from pipeline.multitask import (
    SUMMARY,
    MultiTaskModule,
    TaskBatches,
    TaskSource,
    _runs,
    distill_multitask_seeds,
    task_order,
    task_shares,
)
from pipeline.params import params_from_dict
from pipeline.specs import MultiTaskStudent
from pipeline.tasks.data import task_data
from pipeline.tasks.heads import head_of
from tests.conftest import ROOT, SAMPLES, make_tokenizer, tiny_bert_config

TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SST2_LABELS = ["negative", "positive"]


# ---- the batch mix --------------------------------------------------------------------------------------------------
def _lengths(sizes: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {t: rng.integers(3, 30, size=n) for t, n in sizes.items()}


@pytest.mark.parametrize("rule", ["proportional", "temperature", "round_robin"])
def test_task_batches_are_a_function_of_the_seed_and_keep_to_one_task(rule):
    lengths = _lengths({"main": 100, "ner": 37})
    a, b, c = (TaskBatches(lengths, 8, {"main": 1.0, "ner": 1.0}, rule, 2.0, seed) for seed in (0, 0, 1))
    for epoch in (0, 1):
        for s in (a, b, c):
            s.set_epoch(epoch)
        assert list(a) == list(b)
    first = list(a)
    assert len(first) == len(a) == 13 + 5  # an epoch: as many batches as the tasks' own epochs together
    for batch in first:
        owners = {"main" if i < 100 else "ner" for i in batch}
        assert len(owners) == 1
    if rule != "round_robin":
        assert first != list(c)


def test_the_counts_over_an_epoch_match_the_weights_and_rule():
    own = {"main": 300, "ner": 100}
    assert task_shares(own, {"main": 1.0, "ner": 1.0}, "proportional", 2.0) == {"main": 300, "ner": 100}
    assert task_shares(own, {"main": 1.0, "ner": 3.0}, "proportional", 2.0) == {"main": 200, "ner": 200}
    assert task_shares(own, {"main": 1.0, "ner": 1.0}, "round_robin", 2.0) == {"main": 200, "ner": 200}
    # temperature 2: shares as sqrt(300) : sqrt(100)
    shares = task_shares(own, {"main": 1.0, "ner": 1.0}, "temperature", 2.0)
    assert sum(shares.values()) == 400 and shares["main"] == round(400 * 3**0.5 / (3**0.5 + 1))
    lengths = _lengths({"main": 160, "ner": 40})
    sampler = TaskBatches(lengths, 8, {"main": 1.0, "ner": 1.0}, "round_robin", 2.0, 0)
    tasks = ["main" if b[0] < 160 else "ner" for b in sampler]
    assert Counter(tasks) == Counter(sampler.counts) == {"main": 13, "ner": 12}
    assert all(tasks[i] != tasks[i + 1] for i in range(len(tasks) - 2))  # interleaved evenly
    assert task_order({"a": 2, "b": 2}, "round_robin", 0, 0) == ["a", "b", "a", "b"]


def test_a_task_drawn_more_than_its_size_runs_on_through_its_rows_before_repeating_any():
    lengths = _lengths({"main": 16, "ner": 64})
    sampler = TaskBatches(lengths, 8, {"main": 1.0, "ner": 1.0}, "round_robin", 2.0, 0)
    assert sampler.counts == {"main": 5, "ner": 5}  # main's 2 own batches drawn 5 times an epoch
    seen = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen += [sorted(b) for b in sampler if b[0] < 16]
    rows = [i for b in seen for i in b]
    for start in range(0, 80, 16):  # every 2 batches: each of main's 16 rows once
        assert sorted(rows[start : start + 16]) == list(range(16))


# ---- a tiny multi-task run ------------------------------------------------------------------------------------------
def test_under_ddp_each_batch_is_dealt_out_in_parts_so_every_process_trains_one_task_per_step():
    lengths = _lengths({"a": 100, "b": 45})
    one = TaskBatches(lengths, 16, {"a": 1.0, "b": 1.0}, "proportional", 2.0, seed=3)
    two = TaskBatches(lengths, 16, {"a": 1.0, "b": 1.0}, "proportional", 2.0, seed=3, world=2)
    whole, parts = list(one), list(two)
    assert len(two) == 2 * len(one) == len(parts)
    for batch, (p0, p1) in zip(whole, zip(parts[::2], parts[1::2])):  # Accelerate gives part 2k to rank 0, 2k+1 to rank 1
        assert p0 + p1 == batch and abs(len(p0) - len(p1)) <= 1
    tiny = TaskBatches({"a": np.array([5])}, 16, {"a": 1.0}, "proportional", 2.0, seed=0, world=2)
    assert list(tiny) == [[0], [0]]  # fewer rows than processes: a row repeats, no process gets an empty batch


@pytest.fixture(scope="module")
def ner_cache(tmp_path_factory, tiny_teacher):
    """A CoNLL cache whose teacher uses the SST-2 teacher's tokenizer (the tasks share one)."""
    root = tmp_path_factory.mktemp("mt-ner")
    tokenizer = BertTokenizerFast.from_pretrained(tiny_teacher)
    return _ner_cache(root, tokenizer)


def _ner_cache(root: Path, tokenizer) -> Path:
    from pipeline.config import DataConfig

    torch.manual_seed(0)
    teacher = root / "teacher"
    BertForTokenClassification(
        tiny_bert_config(len(tokenizer), **head_of("token_classification").head_config(TAGS))
    ).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    conll = SAMPLES / "conll2003"
    data = DataConfig(
        train=str(conll / "train.txt"), dev=str(conll / "dev.txt"), label_names=TAGS, max_train_examples=96,
        max_length=32, transfer=None, val_examples=0,
    )  # fmt: skip
    splits, info = task_data("token_classification").prepare(data, tokenizer, 0)
    extract_cache(
        teacher, splits, root / "cache", ExtractConfig(layers=[2, 4], dtype="float16", rank=None, device="cpu"), info=info
    )
    return root / "cache"


def _sources(tiny_cache, ner_cache) -> dict[str, TaskSource]:
    return {
        "main": TaskSource(tiny_cache, None, 32, SST2_LABELS, None),
        "ner": TaskSource(ner_cache, None, 32, TAGS, None),
    }


CFG = DistillConfig(epochs=1, batch_size=16, logging_steps=2, checkpoint_steps=0, transfer=False)
SPEC = MultiTaskStudent(
    num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, init="random", tasks={"main": 1.0, "ner": 1.0}
)


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory, tiny_cache, ner_cache):
    out = tmp_path_factory.mktemp("mt") / "mt"
    real = (BertForSequenceClassification.from_pretrained, BertForTokenClassification.from_pretrained)

    def no_teacher(*args, **kwargs):
        raise AssertionError("stage two built a model from a checkpoint: no teacher may be in memory")

    BertForSequenceClassification.from_pretrained = BertForTokenClassification.from_pretrained = no_teacher
    try:
        result = distill_multitask_seeds(_sources(tiny_cache, ner_cache), out, SPEC, CFG, "proportional", 2.0, seeds=[0, 1])
    finally:
        BertForSequenceClassification.from_pretrained, BertForTokenClassification.from_pretrained = real
    return out, result


def test_one_student_learns_both_tasks_from_their_caches_alone(mt_run):
    out, result = mt_run
    summary = result["summary"]
    tasks = summary["tasks"]
    assert summary["steps"] == tasks["main"]["batches_per_epoch"] + tasks["ner"]["batches_per_epoch"]
    assert {h["step"] for h in result["history"] if "loss_ner_ce" in h or "loss_main_ce" in h}
    assert summary["params"] < sum(summary["params_per_task"].values())  # one encoder, two heads
    assert summary["params"] == sum(summary["params_per_task"].values()) - summary["shared_encoder_params"]
    assert (out / SUMMARY).is_file() and (out / "main" / "seeds" / "1" / "config.json").is_file()
    assert summary["seeds"] == [0, 1] and summary["seconds_mean"] > 0 and summary["seconds_std"] >= 0  # the report's
    assert not (out / ".seed").exists()


def test_each_task_checkpoint_loads_with_plain_transformers_and_shares_the_encoder(mt_run, tiny_cache):
    out, _ = mt_run
    cls = AutoModelForSequenceClassification.from_pretrained(out / "main").eval()
    tok = AutoModelForTokenClassification.from_pretrained(out / "ner").eval()
    assert cls.config.id2label[1] == "positive" and tok.config.num_labels == len(TAGS)
    for (name, a), b in zip(cls.bert.encoder.state_dict().items(), tok.bert.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(cls.bert.embeddings.word_embeddings.weight, tok.bert.embeddings.word_embeddings.weight)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        hidden_cls = cls.bert(input_ids=ids).last_hidden_state
        hidden_tok = tok.bert(input_ids=ids).last_hidden_state
    torch.testing.assert_close(hidden_cls, hidden_tok)


@pytest.mark.parametrize("overrides", [{}, {"ner": {"alpha": 1.0, "beta": 0.0, "gamma": 0.0}}])
def test_a_task_batch_gives_the_single_task_loss(tiny_cache, ner_cache, overrides):
    """With task_overrides, a task's batches train with its own loss settings: the single-task loss under them."""
    spec = dataclasses.replace(SPEC, task_overrides=overrides)
    sources = _sources(tiny_cache, ner_cache)
    runs = _runs(sources, spec, CFG, seed=0)
    multi = MultiTaskModule({t: r.module for t, r in runs.items()}).eval()
    assert runs["main"].module.cfg == CFG
    single = prepare_run(
        ner_cache, SPEC, spec.task_distill(CFG, "ner"), seed=5, teacher_dir=None, max_length=32, label_names=TAGS,
        rank=None, task_config=None,
    )  # fmt: skip
    single.student.load_state_dict(runs["ner"].student.state_dict())
    single.module.eval()
    from pipeline.collate import CacheCollator

    collate = CacheCollator(single.plan.hidden_layers, 0, task=single.module.task)
    batch = collate(single.train.__getitems__(list(range(8))))
    with torch.no_grad():
        want = single.module(**batch)["loss"]
        got = multi(task="ner", **batch)["loss"]
    torch.testing.assert_close(got, want)
    multi.train()(task="ner", **batch)
    assert multi.running and all(k.startswith("ner_") for k in multi.running)  # logged per task
    assert ("ner_hidden" in multi.running) == (not overrides)  # gamma 0 for ner: no hidden-state loss


def test_encoder_init_average_starts_the_shared_encoder_from_the_mean_of_the_tasks(tiny_cache, ner_cache):
    runs = _runs(_sources(tiny_cache, ner_cache), SPEC, CFG, seed=0)
    bases = [r.student.base_model for r in runs.values()]
    with torch.no_grad():
        for p in bases[1].encoder.parameters():  # as if built from another teacher
            p.add_(1.0)
    want = {
        k: (a + b) / 2
        for (k, a), b in zip(bases[0].encoder.state_dict().items(), bases[1].encoder.state_dict().values())
    }  # fmt: skip
    MultiTaskModule({t: r.module for t, r in runs.items()}, "average")
    for k, v in bases[1].encoder.state_dict().items():
        torch.testing.assert_close(v, want[k])  # shared, and the mean of the two
    assert bases[0].encoder is bases[1].encoder


def test_a_cache_of_another_tokenizer_is_refused_by_task_name(tmp_path, tiny_cache):
    other = _ner_cache(tmp_path, make_tokenizer(tmp_path / "tok", ROOT / "data" / "raw" / "sst2"))
    with pytest.raises(PipelineError, match=r"task 'ner' was cached with another tokenizer than task 'main'"):
        _runs(_sources(tiny_cache, other), SPEC, CFG, seed=0)


STUDENTS = {"l3": {"num_layers": 3, "hidden_size": 384}}


# ---- params ---------------------------------------------------------------------------------------------------------
def _params(tmp_path, tasks=None, student_tasks=None, **task_file):
    conll = {"task": "token_classification", "data": {"max_length": 64, "label_names": TAGS}, "students": STUDENTS, **task_file}
    import yaml

    (tmp_path / "conll.yaml").write_text(yaml.safe_dump(conll))
    student = {"num_layers": 2, "hidden_size": 384, "tasks": student_tasks or {"main": 1.0, "conll2003": 1.0}}
    return params_from_dict(
        {
            "students": STUDENTS,
            "multitask": {
                "tasks": tasks if tasks is not None else {"conll2003": str(tmp_path / "conll.yaml")},
                "students": {"mt": student},
            },
        }
    )


@pytest.mark.parametrize(
    "student_tasks, message",
    [
        ({"main": 1.0, "conl2003": 1.0}, r"'multitask.students.mt.tasks' names \['conl2003'\].*have: \['main', 'conll2003'\]"),
        ({"main": 1.0, "conll2003": 0.0}, r"'multitask.students.mt.tasks' weights must be > 0, got \{'conll2003': 0.0\}"),
        ({"main": -1.0}, r"weights must be > 0"),
    ],
)
def test_a_student_naming_an_unknown_task_or_a_weight_of_zero_is_one_line(tmp_path, student_tasks, message):
    with pytest.raises(PipelineError, match=message):
        _params(tmp_path, student_tasks=student_tasks)


def _student_params(tmp_path, **student):
    import yaml

    (tmp_path / "conll.yaml").write_text(
        yaml.safe_dump({"task": "token_classification", "data": {"max_length": 64, "label_names": TAGS}, "students": STUDENTS})
    )
    mt = {"num_layers": 2, "hidden_size": 384, "tasks": {"main": 1.0, "conll2003": 1.0}, **student}
    tasks = {"conll2003": str(tmp_path / "conll.yaml")}
    return params_from_dict({"students": STUDENTS, "multitask": {"tasks": tasks, "students": {"mt": mt}}})


def test_task_overrides_and_encoder_init_are_read_and_checked(tmp_path):
    params = _student_params(tmp_path, encoder_init="average", task_overrides={"conll2003": {"gamma": 0, "alpha": 1}})
    spec = params.multitask.students["mt"]
    assert spec.encoder_init == "average" and spec.task_overrides == {"conll2003": {"gamma": 0.0, "alpha": 1.0}}
    cfg, _ = params.distill_for("mt")
    assert spec.task_distill(cfg, "conll2003").gamma == 0.0 and spec.task_distill(cfg, "main") == cfg
    for student, message in [
        ({"task_overrides": {"conl2003": {"gamma": 0.0}}}, r"task_overrides' names \['conl2003'\], not among its tasks"),
        (
            {"task_overrides": {"conll2003": {"learning_rate": 1e-3}}},
            r"task_overrides.conll2003.learning_rate' cannot differ by task",
        ),
        ({"task_overrides": {"conll2003": {"gamma": "no"}}}, r"'multitask.students.mt.task_overrides.conll2003.gamma' must be"),
        ({"task_overrides": {"conll2003": 0.0}}, r"task_overrides.conll2003' must be a mapping of loss keys"),
        ({"encoder_init": "mean"}, r"encoder_init"),
    ]:
        with pytest.raises(PipelineError, match=message):
            _student_params(tmp_path, **student)


def test_tasks_that_disagree_on_max_length_or_tokenizer_are_refused(tmp_path):
    from pipeline.multitask_params import task_sources

    params = _params(tmp_path, data={"max_length": 128, "label_names": TAGS})  # params.yaml's: 64
    with pytest.raises(PipelineError, match=r"conll.yaml: task 'conll2003' has data.max_length 128, params.yaml 64; .*same"):
        task_sources(params, "mt", cache=tmp_path, teacher=tmp_path, tasks_root=tmp_path)
    params = _params(tmp_path, teacher={"model": "bert-base-cased"})
    with pytest.raises(PipelineError, match=r"task 'conll2003' has teacher.model 'bert-base-cased'.*set the same teacher.model"):
        task_sources(params, "mt", cache=tmp_path, teacher=tmp_path, tasks_root=tmp_path)
    missing = _params(tmp_path, tasks={"conll2003": str(tmp_path / "nope.yaml")})
    with pytest.raises(PipelineError, match=r"'multitask.tasks.conll2003' names .*nope.yaml, which is not a file"):
        task_sources(missing, "mt", cache=tmp_path, teacher=tmp_path, tasks_root=tmp_path)


# ---- the stage graph ------------------------------------------------------------------------------------------------
def test_each_task_gets_its_stages_once_and_a_student_depends_on_exactly_the_caches_it_reads(tmp_path):
    import subprocess
    import sys

    import yaml

    from pipeline.dvcgraph import stale, write
    from tests.conftest import copy_project

    root = copy_project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["multitask"]["tasks"] = {"conll2003": "params/conll2003.yaml"}
    three = {"num_layers": 3, "hidden_size": 384, "init": "teacher"}
    params["multitask"]["students"] = {
        "mt": {**three, "tasks": {"main": 1.0, "conll2003": 1.0}},
        "ner_l3": {**three, "tasks": {"conll2003": 1.0}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "task-conll2003-extract" in stale(root)
    write(root)
    assert stale(root) == []
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for step in ("prepare", "teacher", "extract", "evaluate_teacher"):
        assert "--params params/conll2003.yaml" in stages[f"task-conll2003-{step}"]["cmd"]
    assert stages["task-conll2003-extract"]["outs"][0] == "artifacts/tasks/conll2003/cache"
    assert {"params/conll2003.yaml": ["seed", "teacher"]} in stages["task-conll2003-teacher"]["params"]
    data = lambda s: [d for d in stages[s]["deps"] if d.startswith("artifacts/")]  # noqa: E731
    assert data("distill_multitask-mt") == [
        "artifacts/cache",
        "artifacts/teacher",
        "artifacts/tasks/conll2003/cache",
        "artifacts/tasks/conll2003/teacher",
    ]
    assert data("distill_multitask-ner_l3") == ["artifacts/tasks/conll2003/cache", "artifacts/tasks/conll2003/teacher"]
    assert "pipeline/multitask.py" in stages["distill_multitask-mt"]["deps"]
    assert "pipeline/multitask.py" not in stages["distill"]["do"]["deps"]  # single-task students: untouched
    assert set(n for n in stages if n.startswith("evaluate_multitask-")) == {
        "evaluate_multitask-mt-main",
        "evaluate_multitask-mt-conll2003",
        "evaluate_multitask-ner_l3-conll2003",
    }
    ner = stages["evaluate_multitask-mt-conll2003"]
    assert "--model artifacts/students/mt/conll2003 --name mt --export artifacts/exports/mt/conll2003 " in ner["cmd"]
    assert "--cache artifacts/tasks/conll2003/cache" in ner["cmd"] and "artifacts/exports/mt/conll2003" in ner["deps"]
    # each task's checkpoint ships as every student does: ONNX fp32 and int8 by params.yaml's export section
    export = stages["export_multitask-mt-conll2003"]
    assert export["cmd"] == "python stages/export.py --model artifacts/students/mt/conll2003 --out artifacts/exports/mt/conll2003"
    assert export["outs"] == ["artifacts/exports/mt/conll2003"] and export["params"] == ["export"]
    assert "pipeline/exporting.py" in export["deps"] and "pipeline/multitask.py" not in export["deps"]
    assert ner["metrics"] == [{"artifacts/tasks/conll2003/metrics/mt.json": {"cache": False}}]
    assert "--one-encoder main,conll2003 " in stages["evaluate_multitask-mt-main"]["cmd"] and "--one-encoder" not in ner["cmd"]
    assert "--one-encoder" not in stages["evaluate_multitask-ner_l3-conll2003"]["cmd"]  # one task: nothing to share
    report = stages["task-conll2003-report"]
    assert "--task conll2003 --metrics artifacts/tasks/conll2003/metrics" in report["cmd"]
    assert {"artifacts/metrics/train_mt.json", "artifacts/metrics/train_ner_l3.json"} <= set(report["deps"])
    # DVC reads the graph: every generated stage, its params in the task's own file
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=root, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    for name in (
        "task-conll2003-prepare",
        "distill_multitask-mt",
        "export_multitask-mt-main",
        "evaluate_multitask-ner_l3-conll2003",
        "task-conll2003-report",
    ):
        assert name in listed.stdout


def test_each_task_checkpoint_is_scored_by_evaluate_on_its_own_cache_with_its_seeds(mt_run, tiny_cache, ner_cache):
    from pipeline.evaluation import evaluate_saved_model

    out, _ = mt_run
    for task, cache, metric in (("main", tiny_cache, "accuracy"), ("ner", ner_cache, "f1")):
        result = evaluate_saved_model(out / task, cache, batch_size=32, latency_batch_sizes=[1], latency_repeats=1)
        assert 0.0 <= result[metric] <= 1.0 and result["seeds"] == [0, 1], (task, result)


def test_one_encoder_pass_answers_every_task_as_its_checkpoint_alone_does(mt_run, tiny_cache):
    from pipeline.multitask_serving import OneEncoder, Separately, load_task_models, one_encoder_scores

    out, _ = mt_run
    alone = Separately(load_task_models(out, ["main", "ner"]))
    one = OneEncoder(load_task_models(out, ["main", "ner"]))
    calls = []
    one._once[1].inner.register_forward_hook(lambda *a: calls.append(1))  # the transformer layers
    ids = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 13, 14, 3, 0, 0]])
    mask = (ids != 0).long()
    got, want = one(input_ids=ids, attention_mask=mask), alone(input_ids=ids, attention_mask=mask)
    assert len(calls) == 1  # one encoder pass for both tasks
    torch.testing.assert_close(got["main"].logits, want["main"].logits)
    torch.testing.assert_close(got["ner"].logits, want["ner"].logits)
    one(input_ids=ids[:1], attention_mask=mask[:1])  # nothing carried over from the last call
    assert len(calls) == 2
    scores = one_encoder_scores(out, ["main", "ner"], tiny_cache, [1], 2)
    encoder = sum(p.numel() for part in ("embeddings", "encoder") for p in getattr(alone.models["ner"].bert, part).parameters())
    assert scores["params"] == scores["params_separate"] - encoder
    assert scores["latency_ms_b1"] > 0 and scores["latency_ms_b1_separate"] > 0


def test_checkpoints_of_different_encoders_are_not_served_as_one(mt_run):
    from pipeline.multitask_serving import load_task_models, share_encoder

    out, _ = mt_run
    models = load_task_models(out, ["main", "ner"])
    with torch.no_grad():
        models["ner"].bert.encoder.layer[0].output.dense.weight.add_(0.1)
    with pytest.raises(PipelineError, match="task ner: its encoder differ from task main's"):
        share_encoder(models)
    with pytest.raises(PipelineError, match="no checkpoint for task"):
        load_task_models(out, ["main", "qa"])


def test_the_readme_serves_a_multi_task_student_from_one_encoder(mt_run):
    import re

    out, _ = mt_run
    snippet = re.search(r"one encoder \*pass\* for all tasks.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    code = snippet.group(1).replace("artifacts/students/mt", str(out)).replace('"conll2003"', '"ner"')
    code = code.replace("/conll2003", "/ner")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    inputs = {k: scope["inputs"][k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(scope["out"]["main"].logits, scope["sst"](**inputs).logits)
        torch.testing.assert_close(scope["out"]["ner"].logits, scope["ner"](**inputs).logits)
    assert scope["ner"].bert.encoder is scope["sst"].bert.encoder


# Trains the tiny two-task student with distill_multitask_seeds in each process torchrun starts (or alone); rank 0
# prints the summary and the optimizer steps taken.
MULTITASK_JOB = r"""
import json, sys
from pathlib import Path

from pipeline.config import DistillConfig
from pipeline.distributed import ranks
from pipeline.multitask import TaskSource, distill_multitask_seeds
from pipeline.specs import MultiTaskStudent

sst, ner, out = (Path(a) for a in sys.argv[1:4])
tags = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
sources = {"main": TaskSource(sst, None, 32, ["negative", "positive"], None), "ner": TaskSource(ner, None, 32, tags, None)}
spec = MultiTaskStudent(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, init="random", tasks={"main": 1.0, "ner": 1.0})
cfg = DistillConfig(epochs=1, batch_size=16, logging_steps=2, checkpoint_steps=4, transfer=False)
result = distill_multitask_seeds(sources, out, spec, cfg, "proportional", 2.0, seeds=[0])
if ranks().main:
    print(json.dumps({"summary": result["summary"], "steps": max(h["step"] for h in result["history"])}))
"""


def test_two_process_ddp_multi_task_student_takes_the_one_process_steps_and_saves_each_task_once(tmp_path, tiny_cache, ner_cache):
    import json
    import sys

    from tests.test_distributed import _run, _torchrun

    script = tmp_path / "mt_job.py"
    script.write_text(MULTITASK_JOB)
    args = [str(script), str(tiny_cache), str(ner_cache)]
    one = _run([sys.executable, *args, str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-12000:]
    two = _run(_torchrun(2, *args, str(tmp_path / "two")))
    assert two.returncode == 0, two.stderr[-12000:]
    single, ddp = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (one, two))
    assert single["summary"]["processes"] == 1 and ddp["summary"]["processes"] == 2
    assert ddp["steps"] == single["steps"] == single["summary"]["steps"]  # batch_size is the global batch
    assert ddp["summary"]["tasks"] == single["summary"]["tasks"]
    for run in ("one", "two"):
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == sorted(["main", "ner", SUMMARY])
        assert AutoModelForTokenClassification.from_pretrained(tmp_path / run / "ner").config.num_labels == len(TAGS)
    assert not list(tmp_path.glob("**/checkpoint-*")) and not list(tmp_path.glob("**/.seed"))


def test_the_stage_relaunches_under_torchrun_and_a_rank_error_is_one_line(tmp_path, tiny_cache, ner_cache):
    """`python stages/distill_multitask.py` as dvc runs it, with the student's nproc 2: trained by two processes; a
    batch that does not split over them is refused in the ranks, and the stage prints that one line and exits 2."""
    import json
    import subprocess
    import sys

    import yaml

    from tests.test_distributed import ONE_THREAD

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(max_length=32, label_names=SST2_LABELS)
    params["extract"]["rank"] = None
    ner = {"task": "token_classification", "data": {"max_length": 32, "label_names": TAGS}, "extract": {"rank": None}}
    (tmp_path / "ner.yaml").write_text(yaml.safe_dump({**ner, "students": STUDENTS}))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "ner").symlink_to(ner_cache.parent)  # its cache/ and teacher/
    student = {"num_layers": 2, "hidden_size": 32, "num_heads": 4, "init": "random", "tasks": {"main": 1.0, "ner": 1.0}}
    student.update(nproc=2, batch_size=16, epochs=1, transfer=False, checkpoint_steps=0)

    def stage(**overrides) -> subprocess.CompletedProcess:
        params["multitask"] = {"tasks": {"ner": str(tmp_path / "ner.yaml")}, "students": {"mtiny": {**student, **overrides}}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        cmd = [sys.executable, str(ROOT / "stages" / "distill_multitask.py"), "--params", str(tmp_path / "params.yaml")]
        cmd += ["--student", "mtiny", "--cache", str(tiny_cache), "--teacher", str(tmp_path / "none")]
        cmd += ["--tasks-root", str(tmp_path / "tasks"), "--out-root", str(tmp_path / "students")]
        cmd += ["--metrics-root", str(tmp_path / "metrics"), "--plots-root", str(tmp_path / "plots")]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=ONE_THREAD)

    done = stage()
    assert done.returncode == 0, done.stderr[-12000:]
    summary = json.loads((tmp_path / "metrics" / "train_mtiny.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == sum(t["batches_per_epoch"] for t in summary["tasks"].values())
    for task in ("main", "ner"):
        assert (tmp_path / "students" / "mtiny" / task / "model.safetensors").is_file()
    refused = stage(batch_size=15)
    assert refused.returncode == 2, refused.stderr[-4000:]
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: ") and "distill.batch_size 15 is the global batch" in errors[-1]
    assert "Traceback" not in refused.stderr and "ChildFailedError" not in refused.stderr


def test_extractive_qa_is_a_third_task_of_the_same_student(tmp_path, tiny_teacher, tiny_cache, ner_cache):
    # SST-2, CoNLL and SQuAD: the QA head trains through its own Task facet and ships as a plain QA checkpoint
    from transformers import AutoModelForQuestionAnswering, BertForQuestionAnswering

    from pipeline.config import DataConfig
    from pipeline.evaluation import evaluate_saved_model
    from pipeline.tasks.question_answering import QuestionAnsweringConfig

    tokenizer = BertTokenizerFast.from_pretrained(tiny_teacher)  # the tasks share one tokenizer
    torch.manual_seed(0)
    teacher = tmp_path / "qa-teacher"
    BertForQuestionAnswering(tiny_bert_config(len(tokenizer), architectures=["BertForQuestionAnswering"])).save_pretrained(
        teacher
    )
    tokenizer.save_pretrained(teacher)
    qa = QuestionAnsweringConfig(doc_stride=16)
    squad = SAMPLES / "squad"
    data = DataConfig(
        train=str(squad / "train.json"),
        dev=str(squad / "dev.json"),
        max_train_examples=40,
        max_dev_examples=12,
        max_length=64,
        transfer=None,
        val_examples=0,
    )  # the tiny tokenizer's questions need 64 tokens; each task's checkpoint keeps its own max_length
    splits, info = task_data("question_answering", qa).prepare(data, tokenizer, 0)
    cache = tmp_path / "qa-cache"
    extract_cache(teacher, splits, cache, ExtractConfig(layers=[2, 4], dtype="float16", rank=None, device="cpu"), info=info)
    sources = {**_sources(tiny_cache, ner_cache), "qa": TaskSource(cache, None, 64, None, None, qa)}
    spec = MultiTaskStudent(
        num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, init="random",
        tasks={"main": 1.0, "ner": 1.0, "qa": 1.0},
    )  # fmt: skip
    out = tmp_path / "mt3"
    summary = distill_multitask_seeds(sources, out, spec, CFG, "proportional", 2.0, seeds=[0])["summary"]
    assert list(summary["tasks"]) == ["main", "ner", "qa"] and summary["tasks"]["qa"]["task"] == "question_answering"
    assert summary["steps"] == sum(t["batches_per_epoch"] for t in summary["tasks"].values())
    assert summary["params"] == sum(summary["params_per_task"].values()) - 2 * summary["shared_encoder_params"]
    reader = AutoModelForQuestionAnswering.from_pretrained(out / "qa").eval()
    tagger = AutoModelForTokenClassification.from_pretrained(out / "ner").eval()
    for (name, a), b in zip(reader.bert.state_dict().items(), tagger.bert.state_dict().values()):
        assert torch.equal(a, b), name
    scores = evaluate_saved_model(out / "qa", cache, batch_size=8, latency_batch_sizes=[1], latency_repeats=1)
    assert scores["headline"] == "f1" and 0 <= scores["f1"] <= 1 and "exact_match" in scores
    # the three tasks from one encoder pass equal each checkpoint alone: QA's start and end logits too
    from pipeline.multitask_serving import OneEncoder, Separately, load_task_models

    ids = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 13, 14, 3, 0, 0]])
    mask = (ids != 0).long()
    got = OneEncoder(load_task_models(out, ["main", "ner", "qa"]))(input_ids=ids, attention_mask=mask)
    want = Separately(load_task_models(out, ["main", "ner", "qa"]))(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got["qa"].start_logits, want["qa"].start_logits)
    torch.testing.assert_close(got["qa"].end_logits, want["qa"].end_logits)
    torch.testing.assert_close(got["ner"].logits, want["ner"].logits)
