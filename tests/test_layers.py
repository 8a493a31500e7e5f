"""The library's layers point one way, read from the source's imports: no import circle in pipeline/, and stage one's
stages (prepare, teacher, extract) depend on no evaluation or report code, so editing those never rebuilds the cache."""

import shutil

import pytest

from pipeline.dvcgraph import code_deps, import_cycles, import_graph
from tests.conftest import ROOT

EVALUATION = {
    f"pipeline/{m}.py" for m in ("evaluation", "latency", "scores", "decisions", "report", "charts", "multitask_serving")
}


def test_pipeline_has_no_import_circle():
    assert import_cycles(import_graph(ROOT)) == []


def test_the_circle_check_finds_a_circle_through_a_lazy_import(tmp_path):
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    losses = tmp_path / "pipeline/losses.py"  # a leaf that would import, inside a function, a module that imports it
    losses.write_text(losses.read_text() + "\n\ndef _late():\n    from pipeline.kd import DistillationModule  # noqa: F401\n")
    cycles = import_cycles(import_graph(tmp_path))
    assert any({"pipeline/losses.py", "pipeline/kd.py"} <= set(c) for c in cycles), cycles


@pytest.mark.parametrize("stage", ["prepare", "teacher", "extract"])
def test_stage_one_depends_on_no_evaluation_code(stage):
    deps = set(code_deps(ROOT / f"stages/{stage}.py", ROOT))
    assert deps & EVALUATION == set()


def _readme_layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("### Layout", 1)[1].split("```", 2)[1]


def test_the_readme_layout_names_every_module_and_no_missing_one():
    import re

    layout = _readme_layout()
    named = set(re.findall(r"[a-z_]+\.py", layout))
    modules = {p.name for p in (ROOT / "pipeline").rglob("*.py") if p.name != "__init__.py"}
    assert modules - named == set(), "README's Layout misses these modules"
    assert named - modules == set(), "README's Layout names modules that do not exist"
    for folder in re.findall(r"^([a-z_]+)/ ", layout, flags=re.M):
        assert (ROOT / folder).is_dir(), folder


FACETS = {"prepare": "data", "teacher": "teacher", "extract": "fields", "distill": "student", "evaluate": "scorer"}


@pytest.mark.parametrize("stage, facet", FACETS.items())
def test_each_stage_depends_on_its_own_task_facet_and_no_other(stage, facet):
    import re

    deps = code_deps(ROOT / f"stages/{stage}.py", ROOT)
    facets = r"pipeline/tasks/(?:[a-z_]+/)?(data|teacher|fields|student|scorer)\.py$"
    used = {m.group(1) for d in deps if (m := re.match(facets, d))}
    assert facet in used, deps
    others = used - {facet}
    assert others == set(), f"stages/{stage}.py reaches other task facets: {sorted(others)}"


def test_no_module_over_350_lines_and_no_task_facet_over_8_methods():
    import ast

    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in (ROOT / "pipeline").rglob("*.py")}
    long = {name: n for name, n in sizes.items() if n > 350}
    assert long == {}
    for path in (ROOT / "pipeline/tasks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = [m.name for m in node.body if isinstance(m, ast.FunctionDef) and not m.name.startswith("__")]
                assert len(methods) <= 8, f"{path.name}: {node.name} has {len(methods)} methods"
