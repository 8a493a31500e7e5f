"""dvc.yaml's code deps and ensemble stages, derived instead of listed by hand (hand lists drift).

- Each stage depends on its script and on exactly the `pipeline/` modules that script imports, directly or through other
  modules (read from the source's import statements), so editing report code never retrains the teacher while editing
  the masking code always rebuilds the cache. `pipeline/cache` is one dep: its package imports all of it.
- DVC cannot expand a list into deps, so each ensemble gets its own stage, `ensemble-<name>`, depending on exactly its
  members' directories (what `dvc repro --pull --allow-missing` needs to fetch them on another machine).

`python -m pipeline.dvcgraph` rewrites dvc.yaml from params.yaml (comments kept); `--check` lists what is stale and
exits 1. A test runs the check, and the ensemble stage refuses to run when its dvc.yaml entry is stale.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from ruamel.yaml import YAML

from pipeline.dvcgraph_tasks import PREFIXES as TASK_PREFIXES
from pipeline.dvcgraph_tasks import report_stages, student_stages, task_stages
from pipeline.params import load_params

CODE_ROOTS = ("pipeline/", "stages/")
ENSEMBLE_PREFIX = "ensemble-"
COMMON_EVAL_ARGS = "--cache artifacts/cache --teacher-metrics artifacts/metrics/teacher.json --metrics-root artifacts/metrics"


def _module_file(root: Path, module: str) -> Path | None:
    base = root / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """pipeline.* modules a file imports (a `from pipeline.x import y` may name a submodule y too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "pipeline")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def import_graph(root: Path, package: str = "pipeline") -> dict[str, set[str]]:
    """Module file -> the package's module files it imports by name (lazy imports inside functions included; the
    implicit import of a parent package's __init__ is not an edge: it is how Python finds a module, not a use)."""
    graph = {}
    for path in sorted((root / package).rglob("*.py")):
        targets = set()
        for module in _imports(path):
            found = _module_file(root, module)
            if found is not None and found != path:
                targets.add(found.relative_to(root).as_posix())
        graph[path.relative_to(root).as_posix()] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def code_deps(script: Path, root: Path) -> list[str]:
    """The pipeline files `script` runs, as dvc.yaml deps: its import closure, parent packages included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in _imports(todo.pop()):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found = _module_file(root, ".".join(parts[:i]))
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    deps = set()
    for path in seen:
        rel = path.relative_to(root).as_posix()
        deps.add("pipeline/cache" if rel.startswith("pipeline/cache/") else rel)
    return sorted(deps)


def _script(cmd: str) -> str | None:
    parts = cmd.split()
    return next((p for p in parts if p.startswith("stages/") and p.endswith(".py")), None)


def ensemble_stage(name: str, members: list[str], template: dict) -> dict:
    """One ensemble's stage: the template's shape, with the name and exactly its members' dirs."""
    deps = [d for d in template["deps"] if not str(d).startswith("artifacts/students")]
    return {
        "cmd": f"python stages/ensemble.py --name {name} --members {' '.join(members)} --students-root artifacts/students "
        f"{COMMON_EVAL_ARGS}",
        "deps": deps + [f"artifacts/students/{m}" for m in members],
        "params": ["evaluate", f"ensembles.{name}"],
        "metrics": [{f"artifacts/metrics/{name}.json": {"cache": False}}],
    }


TEACHER_PREFIXES = ("teacher-", "extract-", "evaluate_teacher-")  # the stages of each extra teacher under `teachers`
TEACHER_ENSEMBLE = "teacher-ensemble"  # the extra teachers' logit average with the main one, scored like a model


def extra_teacher_stages(name: str, stages: dict) -> dict[str, dict]:
    """One extra teacher's stages, shaped like the main teacher's: fine-tune, cache (logits only), evaluate."""
    teacher, extract = stages["teacher"], stages["extract"]
    extract_params = [p for p in extract["params"] if not str(p).startswith("teacher")]
    return {
        f"teacher-{name}": {
            "cmd": f"python stages/teacher.py --name {name} --prepared data/prepared --out artifacts/teachers/{name} "
            f"--metrics artifacts/metrics/train_teacher-{name}.json --plots artifacts/plots/teacher-{name}.csv",
            "deps": list(teacher["deps"]),
            "params": ["seed", "teacher", f"teachers.{name}"],
            "outs": [f"artifacts/teachers/{name}", {f"artifacts/metrics/train_teacher-{name}.json": {"cache": False}}],
        },
        f"extract-{name}": {
            "cmd": f"python stages/extract.py --name {name} --prepared data/prepared --transfer data/transfer "
            f"--teacher artifacts/teachers/{name} --out artifacts/caches/{name} "
            f"--metrics artifacts/metrics/extract-{name}.json",
            "deps": [d for d in extract["deps"] if d != "artifacts/teacher"] + [f"artifacts/teachers/{name}"],
            "params": extract_params + ["teacher", f"teachers.{name}"],
            "outs": [f"artifacts/caches/{name}", {f"artifacts/metrics/extract-{name}.json": {"cache": False}}],
        },
        f"evaluate_teacher-{name}": {
            "cmd": f"python stages/evaluate.py --model artifacts/teachers/{name} --name teacher-{name} "
            "--cache artifacts/cache --teacher-metrics artifacts/metrics/teacher.json --metrics-root artifacts/metrics",
            "deps": [d for d in stages["evaluate_teacher"]["deps"] if d not in ("artifacts/teacher", "artifacts/exports/teacher")]
            + [f"artifacts/teachers/{name}", "artifacts/metrics/teacher.json"],
            "params": ["evaluate"],
            "metrics": [{f"artifacts/metrics/teacher-{name}.json": {"cache": False}}],
        },
    }


def teacher_ensemble_stage(names: list[str], template: dict) -> dict:
    deps = [d for d in template["deps"] if not str(d).startswith("artifacts/students")]
    return {
        "cmd": f"python stages/ensemble.py --name {TEACHER_ENSEMBLE} --teachers teacher {' '.join(names)} "
        f"--teacher artifacts/teacher --teachers-root artifacts/teachers {COMMON_EVAL_ARGS}",
        "deps": deps + ["artifacts/teacher"] + [f"artifacts/teachers/{n}" for n in names],
        "params": ["evaluate", "teachers"],
        "metrics": [{f"artifacts/metrics/{TEACHER_ENSEMBLE}.json": {"cache": False}}],
    }


def _insert_after(stages, anchor: str, new: dict[str, dict]) -> None:
    at = list(stages).index(anchor) + 1
    for offset, (name, body) in enumerate(new.items()):
        stages.insert(at + offset, name, body)


def expected_graph(root: Path) -> dict:
    """dvc.yaml as params.yaml and the code say it should be (loaded round-trip, so comments survive a rewrite)."""
    yaml = YAML()
    graph = yaml.load((root / "dvc.yaml").read_text(encoding="utf-8"))
    stages = graph["stages"]
    params = load_params(root / "params.yaml")
    template = next((s for n, s in stages.items() if n.startswith(ENSEMBLE_PREFIX)), None)
    for name in [n for n in stages if n.startswith(ENSEMBLE_PREFIX)]:
        del stages[name]
    template = template or {"deps": ["stages/ensemble.py", "artifacts/cache", "artifacts/metrics/teacher.json"]}
    report_at = list(stages).index("report") if "report" in stages else len(stages)
    for offset, (name, ens) in enumerate(params.ensembles.items()):
        stages.insert(report_at + offset, f"{ENSEMBLE_PREFIX}{name}", ensemble_stage(name, ens.members, template))
    for name in [n for n in stages if n.startswith(TEACHER_PREFIXES) or n == TEACHER_ENSEMBLE]:
        del stages[name]
    made = {n: extra_teacher_stages(n, stages) for n in params.teachers}
    _insert_after(stages, "teacher", {k: v for m in made.values() for k, v in m.items() if k.startswith("teacher-")})
    _insert_after(stages, "extract", {k: v for m in made.values() for k, v in m.items() if k.startswith("extract-")})
    scored = {k: v for m in made.values() for k, v in m.items() if k.startswith("evaluate_teacher-")}
    if params.teachers:
        scored[TEACHER_ENSEMBLE] = teacher_ensemble_stage(list(params.teachers), template)
    _insert_after(stages, "evaluate_teacher", scored)
    for name in [n for n in stages if n.startswith(TASK_PREFIXES)]:
        del stages[name]
    tasks = {k: v for t, path in params.multitask.tasks.items() for k, v in task_stages(t, path, stages).items()}
    _insert_after(stages, "evaluate_teacher", tasks)
    students = {k: v for s in params.multitask.students for k, v in student_stages(s, params).items()}
    students.update(report_stages(params))
    stages_at = list(stages).index("report") if "report" in stages else len(stages)
    for offset, (name, body) in enumerate(students.items()):
        stages.insert(stages_at + offset, name, body)
    distill = stages["distill"]["do"]
    distill["deps"] = [d for d in distill["deps"] if d != "artifacts/caches"] + (["artifacts/caches"] if params.teachers else [])
    caches_arg = " --caches-root artifacts/caches"
    distill["cmd"] = distill["cmd"].replace(caches_arg, "") + (caches_arg if params.teachers else "")
    for stage in stages.values():
        body = stage["do"] if "do" in stage else stage
        script = _script(body["cmd"])
        if script is None:
            continue
        data = [d for d in body["deps"] if not str(d).startswith(CODE_ROOTS)]
        body["deps"] = [script, *code_deps(root / script, root), *data]
    return graph


def _plain(node):
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def stale(root: Path) -> list[str]:
    """Stages whose dvc.yaml entry differs from what the code and params.yaml make it; [] when in step."""
    current = _plain(YAML(typ="safe").load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    wanted = _plain(expected_graph(root)["stages"])
    names = sorted(set(current) | set(wanted))
    return [n for n in names if current.get(n) != wanted.get(n)]


def write(root: Path) -> None:
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # one line per command
    graph = expected_graph(root)  # read before the file is opened for writing
    with open(root / "dvc.yaml", "w", encoding="utf-8") as f:
        yaml.dump(graph, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="list stale stages and exit 1 instead of rewriting dvc.yaml")
    parser.add_argument("--root", default=".", help="project root (default: .)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.check:
        names = stale(root)
        if names:
            print(f"dvc.yaml: stale stages {names}; run `python -m pipeline.dvcgraph` to regenerate them", file=sys.stderr)
            return 1
        return 0
    write(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
