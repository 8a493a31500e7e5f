"""The library's layers point one way, read from the source's imports: no import circle in pipeline/, and stage one's
stages (prepare, teacher, extract) depend on no evaluation or report code, so editing those never rebuilds the cache."""

import shutil

import pytest

from pipeline.dvcgraph import code_deps, import_cycles, import_graph
from tests.conftest import ROOT

EVALUATION = {"pipeline/evaluation.py", "pipeline/latency.py", "pipeline/report.py"}


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
