"""dvc.yaml cannot drift from the code or params.yaml: code deps come from each stage's imports, ensemble stages from
`ensembles`; a stale dvc.yaml fails here, and a stale ensemble stage refuses to run."""

import shutil
import subprocess
import sys

import yaml

from pipeline.dvcgraph import code_deps, stale, write
from tests.conftest import ROOT


def _copy_project(tmp_path):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("pipeline", "stages"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _stage(root, name):
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"][name]


def test_the_shipped_dvc_yaml_is_in_step_with_the_code_and_params():
    assert stale(ROOT) == [], "run `python -m pipeline.dvcgraph`"


def test_each_stage_depends_on_the_modules_its_script_imports_through_any_chain():
    deps = code_deps(ROOT / "stages/extract.py", ROOT)
    # extract -> pipeline.extract -> pipeline.mlm decides the masking, so a masking change must rebuild the cache
    assert {"pipeline/extract.py", "pipeline/extract_loop.py", "pipeline/mlm.py", "pipeline/journal.py", "pipeline/cache"} <= set(
        deps
    )
    assert "pipeline/report.py" not in deps and "pipeline/kd.py" not in deps  # report or student code never rebuilds the cache


def test_a_new_import_makes_dvc_yaml_stale_until_regenerated(tmp_path):
    root = _copy_project(tmp_path)
    script = root / "stages/teacher.py"
    script.write_text(script.read_text().replace("import json\n", "import json\n\nimport pipeline.report  # noqa: F401\n", 1))
    assert stale(root) == ["teacher"]
    write(root)
    assert stale(root) == []
    assert "pipeline/report.py" in _stage(root, "teacher")["deps"]


def test_an_ensemble_stage_depends_on_exactly_its_members(tmp_path):
    root = _copy_project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["ensembles"] = {"trio": {"members": ["l3", "l2", "l3_hard"]}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(stale(root)) == {"ensemble-l3_l2", "ensemble-trio"}
    write(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert "ensemble-l3_l2" not in stages
    students = [d for d in stages["ensemble-trio"]["deps"] if d.startswith("artifacts/students")]
    assert students == ["artifacts/students/l3", "artifacts/students/l2", "artifacts/students/l3_hard"]
    assert "--name trio --members l3 l2 l3_hard --students-root artifacts/students " in stages["ensemble-trio"]["cmd"]


def test_a_stale_ensemble_stage_refuses_to_run_and_names_the_fix():
    proc = subprocess.run(
        [sys.executable, "stages/ensemble.py", "--name", "l3_l2", "--members", "l3", "--students-root", "s", "--cache", "c"]
        + ["--teacher-metrics", "t.json", "--metrics-root", "m"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "generated for members ['l3'] but params.yaml says ['l3', 'l2']" in proc.stderr
    assert "python -m pipeline.dvcgraph" in proc.stderr


# read but deliberately not a dep: the cache's manifest records the teacher's fingerprint (distill checks the weights
# against it), so a changed teacher already reruns distill through the cache, and machine B needs the teacher only for
# init 'teacher' (README "Stage one on one machine, stage two on another")
UNDECLARED = {("distill", "artifacts/teacher")}


def _declared(body: dict) -> set[str]:
    paths = set()
    for key in ("deps", "outs", "metrics", "plots"):
        for item in body.get(key, []):
            paths.add(str(next(iter(item))) if isinstance(item, dict) else str(item))
    return paths


def test_every_path_a_stage_is_given_is_declared_and_every_output_is_one_it_is_given():
    """dvc.yaml passes each stage its paths in `cmd` (the scripts have no defaults): each path in a command is a dep or
    an output of the stage or a folder of one, and each output lies at or under a path its command names."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        given = [p for p in body["cmd"].split()[2:] if "/" in p]
        declared = _declared(body)
        for path in given:
            if (name, path) in UNDECLARED:
                continue
            assert any(d == path or d.startswith(path + "/") for d in declared), (name, path)
        outputs = declared - {str(d) for d in body["deps"]}
        for out in outputs:
            assert any(out == p or out.startswith(p + "/") for p in given), (name, out)


def test_stage_scripts_have_no_path_defaults():
    import ast

    for script in sorted((ROOT / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
                value = getattr(default, "value", None)
                assert not (isinstance(value, str) and "/" in value), f"{script.name}: {ast.unparse(node)}"
