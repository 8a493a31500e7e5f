"""A multi-task student's sources from params: `main` is this params file's own pipeline (its cache and teacher), each
other task the pipeline its params file under `multitask.tasks` describes (its stages write under the tasks root).
The tasks share one encoder, so their params must agree on the tokenizer (teacher.model) and data.max_length."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.multitask import TaskSource
from pipeline.params import load_params
from pipeline.specs import MAIN


def task_params(params: Params, name: str) -> Params:
    """The params of task `name`: `params` itself for main, else its params file's (read and checked like any)."""
    if name == MAIN:
        return params
    path = Path(params.multitask.tasks[name])
    if not path.is_file():
        raise PipelineError(
            f"params.yaml: 'multitask.tasks.{name}' names {path}, which is not a file; give the path of that task's "
            "params file from the project root (e.g. params/conll2003.yaml)"
        )
    return load_params(path)


def task_sources(params: Params, student: str, *, cache: Path, teacher: Path, tasks_root: Path | None) -> dict[str, TaskSource]:
    """Each task of `student` (in its `tasks` order) as a TaskSource; tasks that disagree with main on the tokenizer
    or max_length are refused by name."""
    spec = params.multitask.students[student]
    sources = {}
    for name in spec.tasks:
        own = task_params(params, name)
        for key, mine, theirs in (
            ("teacher.model", own.teacher.model, params.teacher.model),
            ("data.max_length", own.data.max_length, params.data.max_length),
        ):
            if mine != theirs:
                raise PipelineError(
                    f"{params.multitask.tasks[name]}: task '{name}' has {key} {mine!r}, params.yaml {theirs!r}; the "
                    f"tasks of 'multitask.students.{student}' share one encoder and tokenizer: set the same {key} in both"
                )
        if name != MAIN and tasks_root is None:
            raise PipelineError("dvc.yaml: distill_multitask has no --tasks-root; run `python -m pipeline.dvcgraph`")
        root = Path(tasks_root) / name if name != MAIN else None
        sources[name] = TaskSource(
            cache_dir=root / "cache" if root else Path(cache),
            teacher_dir=root / "teacher" if root else Path(teacher),
            max_length=own.data.max_length,
            label_names=own.data.label_names,
            rank=own.extract.rank,
            task_config=own.task_config,
        )
    return sources
