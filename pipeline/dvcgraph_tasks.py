"""dvc.yaml's generated stages for multi-task distillation (`multitask` in params.yaml): each other task's pipeline
once (`task-<t>-prepare`, `-teacher`, `-extract`, `-evaluate_teacher`, run with that task's params file and writing
under data/tasks/<t> and artifacts/tasks/<t>), and per multi-task student one `distill_multitask-<s>` stage that
depends on exactly the caches (and teachers) of its tasks, then per task it learns one `export_multitask-<s>-<t>`
(that task's checkpoint as ONNX fp32 and int8, by params.yaml's `export`, as every student ships) and one
`evaluate_multitask-<s>-<t>` (PyTorch and ONNX; the first also times all its tasks served from one encoder);
`task-<t>-report` reports each other task's models.
Code deps are filled in by `pipeline.dvcgraph` like any stage's."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.specs import MAIN

PREFIXES = ("task-", "distill_multitask-", "export_multitask-", "evaluate_multitask-")


def _task_paths(t: str) -> dict[str, str]:
    if t == MAIN:
        return {"cache": "artifacts/cache", "teacher": "artifacts/teacher", "metrics": "artifacts/metrics"}
    return {
        "cache": f"artifacts/tasks/{t}/cache",
        "teacher": f"artifacts/tasks/{t}/teacher",
        "metrics": f"artifacts/tasks/{t}/metrics",
    }


def _params_of(stage: dict) -> list:
    """A main stage's params keys (those of params.yaml itself), to name in a task's own params file."""
    return [p for p in stage["params"] if isinstance(p, str)]


def task_stages(t: str, path: str, stages: dict) -> dict[str, dict]:
    """Task `t`'s prepare, teacher, extract and teacher evaluation: the main stages' shapes, its params file, its paths."""
    data, tasks = f"data/tasks/{t}", f"artifacts/tasks/{t}"
    args = f"--params {path}"
    return {
        f"task-{t}-prepare": {
            "cmd": f"python stages/prepare.py {args} --out {data}/prepared --transfer-out {data}/transfer",
            "deps": ["stages/prepare.py", "data/raw"],
            "params": [{path: _params_of(stages["prepare"])}],
            "outs": [f"{data}/prepared", f"{data}/transfer"],
        },
        f"task-{t}-teacher": {
            "cmd": f"python stages/teacher.py {args} --prepared {data}/prepared --out {tasks}/teacher "
            f"--metrics {tasks}/metrics/teacher_train.json --plots {tasks}/plots/teacher.csv",
            "deps": ["stages/teacher.py", f"{data}/prepared"],
            "params": [{path: _params_of(stages["teacher"])}],
            "outs": [f"{tasks}/teacher", {f"{tasks}/metrics/teacher_train.json": {"cache": False}}],
            "plots": [{f"{tasks}/plots/teacher.csv": {"cache": False, "x": "step", "y": "loss"}}],
        },
        f"task-{t}-extract": {
            "cmd": f"python stages/extract.py {args} --prepared {data}/prepared --transfer {data}/transfer "
            f"--teacher {tasks}/teacher --out {tasks}/cache --metrics {tasks}/metrics/extract.json",
            "deps": ["stages/extract.py", f"{data}/prepared", f"{data}/transfer", f"{tasks}/teacher"],
            "params": [{path: _params_of(stages["extract"])}],
            "outs": [f"{tasks}/cache", {f"{tasks}/metrics/extract.json": {"cache": False}}],
        },
        f"task-{t}-evaluate_teacher": {
            "cmd": f"python stages/evaluate.py {args} --model {tasks}/teacher --name teacher --cache {tasks}/cache "
            f"--metrics-root {tasks}/metrics",
            "deps": ["stages/evaluate.py", f"{tasks}/teacher", f"{tasks}/cache"],
            "params": [{path: ["evaluate"]}],
            "metrics": [{f"{tasks}/metrics/teacher.json": {"cache": False}}],
        },
    }


def student_stages(name: str, params: Params) -> dict[str, dict]:
    """One multi-task student's training (on exactly its tasks' caches and teachers), its export and evaluation per task."""
    spec, files = params.multitask.students[name], params.multitask.tasks
    own = [p for t in spec.tasks for p in (_task_paths(t)["cache"], _task_paths(t)["teacher"])]
    task_keys = ["data.max_length", "data.label_names", "extract.rank", "teacher.model", "task"]
    keyed = [
        "seed", "distill", "multitask.sampling", "multitask.temperature", f"multitask.students.{name}",
        *(task_keys if MAIN in spec.tasks else ["data.max_length", "teacher.model"]),
    ]  # fmt: skip
    stages = {
        f"distill_multitask-{name}": {
            "cmd": f"python stages/distill_multitask.py --student {name} --cache artifacts/cache --teacher artifacts/teacher "
            "--tasks-root artifacts/tasks --out-root artifacts/students --metrics-root artifacts/metrics "
            "--plots-root artifacts/plots",
            "deps": ["stages/distill_multitask.py", *own],
            "params": [*keyed, *({files[t]: task_keys} for t in spec.tasks if t != MAIN)],
            "outs": [f"artifacts/students/{name}", {f"artifacts/metrics/train_{name}.json": {"cache": False}}],
            "plots": [{f"artifacts/plots/{name}.csv": {"cache": False, "x": "step", "y": "loss"}}],
        }
    }
    for i, t in enumerate(spec.tasks):
        paths, model, export = _task_paths(t), f"artifacts/students/{name}/{t}", f"artifacts/exports/{name}/{t}"
        stages[f"export_multitask-{name}-{t}"] = {  # the student's own export settings: one product, shipped alike
            "cmd": f"python stages/export.py --model {model} --out {export}",
            "deps": ["stages/export.py", f"artifacts/students/{name}"],
            "params": ["export"],
            "outs": [export],
        }
        args = "" if t == MAIN else f"--params {files[t]} "
        if i == 0 and len(spec.tasks) > 1:  # the first task's evaluation also times all tasks from one encoder pass
            args += f"--one-encoder {','.join(spec.tasks)} "
        stages[f"evaluate_multitask-{name}-{t}"] = {
            "cmd": f"python stages/evaluate.py {args}--model {model} --name {name} --export {export} "
            f"--cache {paths['cache']} --teacher-metrics {paths['metrics']}/teacher.json --metrics-root {paths['metrics']}",
            "deps": [
                "stages/evaluate.py",
                f"artifacts/students/{name}",
                export,
                paths["cache"],
                f"{paths['metrics']}/teacher.json",
            ],
            "params": ["evaluate"] if t == MAIN else [{files[t]: ["evaluate"]}],
            "metrics": [{f"{paths['metrics']}/{name}.json": {"cache": False}}],
        }
    return stages


def report_stages(params: Params) -> dict[str, dict]:
    """The report of each other task the multi-task students learn: its teacher and every student scored on it."""
    stages = {}
    for t in params.multitask.tasks:
        learners = [s for s, spec in params.multitask.students.items() if t in spec.tasks]
        if not learners:
            continue
        tasks = f"artifacts/tasks/{t}"
        stages[f"task-{t}-report"] = {
            "cmd": f"python stages/report.py --task {t} --metrics {tasks}/metrics --train-metrics artifacts/metrics "
            f"--plots artifacts/plots --teacher-plots {tasks}/plots --out {tasks}/report",
            "deps": [
                "stages/report.py",
                f"{tasks}/metrics",
                f"{tasks}/plots/teacher.csv",
                *(f"artifacts/metrics/train_{s}.json" for s in learners),
                *(f"artifacts/plots/{s}.csv" for s in learners),
            ],
            "params": ["multitask.students"],
            "outs": [{f"{tasks}/report": {"cache": False}}],
        }
    return stages
