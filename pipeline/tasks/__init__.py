"""Task shapes. The top-level `task:` key of params.yaml names one; each is a package with one module per stage facet:

- `data` (the prepare stage): read, validate and tokenize the splits; fingerprint them; carve the tuning split;
- `teacher` (the teacher stage): the Trainer's datasets, collator and per-epoch metrics;
- `fields` (the extract stage): the cache fields of the teacher's logit-level outputs and what is written beside them;
- `student` (the distill stage): the cache columns a student reads, its batch, its logit-level loss;
- `scorer` (the evaluate stage): the headline metric of a saved model on the cache's dev and val rows.

`pipeline.tasks.<facet>` maps a task name to that facet (`task_data`, `task_teacher`, `task_fields`, `task_student`,
`task_scorer`), and `pipeline.tasks.heads` holds what every stage knows of a task's model head. A stage imports only
its facet's registry, so DVC reruns a stage only when its own facet changes. Sequence classification is the default
shape and each of its facet classes the base the other tasks override.
"""

from __future__ import annotations

from pipeline.errors import PipelineError

SEQUENCE_CLASSIFICATION = "sequence_classification"
TOKEN_CLASSIFICATION = "token_classification"
QUESTION_ANSWERING = "question_answering"
MASKED_LM = "masked_lm"
TASK_NAMES = (SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING, MASKED_LM)


class Configured:
    """A facet built with its task's own params section (`token_classification`, `question_answering`, `masked_lm`
    in params.yaml), or that section's defaults; sequence classification has none."""

    config_class: type | None = None

    def __init__(self, config=None):
        self.config = config if config is not None or self.config_class is None else self.config_class()


def check_task(name: str) -> str:
    """`name` if it is a task; else one line naming the known ones."""
    if name not in TASK_NAMES:
        raise PipelineError(f"params.yaml: 'task' is '{name}'; use one of {', '.join(TASK_NAMES)}")
    return name


def task_of_cache(manifest: dict) -> str:
    """The task a cache was extracted for (caches of sequence classifiers carry no `task` key)."""
    return check_task(manifest.get("task", SEQUENCE_CLASSIFICATION))
