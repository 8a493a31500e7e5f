"""Task shapes behind one seam (`pipeline.tasks.base.Task`): the top-level `task:` key of params.yaml picks one, a
saved model's architecture and a cache's manifest name theirs, and the stages call the task instead of branching."""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.tasks.base import Task
from pipeline.tasks.masked_lm import MaskedLM
from pipeline.tasks.question_answering import QuestionAnswering
from pipeline.tasks.token_classification import TokenClassification

TASKS: dict[str, Task] = {t.name: t for t in (Task(), TokenClassification(), QuestionAnswering(), MaskedLM())}
TASK_NAMES = tuple(TASKS)


def get_task(name: str | Task) -> Task:
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise PipelineError(f"params.yaml: 'task' is '{name}'; use one of {', '.join(TASKS)}")
    return TASKS[name]


def task_of_model(config) -> Task:
    """The task whose head a checkpoint has (by its config's architectures); sequence classification by default."""
    for task in TASKS.values():
        if task.name != Task.name and task.owns(config):
            return task
    return TASKS[Task.name]


def task_of_cache(manifest: dict) -> Task:
    """The task a cache was extracted for (caches of sequence classifiers carry no `task` key)."""
    return get_task(manifest.get("task", Task.name))
