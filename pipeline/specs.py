"""The students' declarations: a student's shape and init (`students.<name>`), and multi-task distillation's section
(`multitask`: the other task pipelines, the batch sampling rule, and the students that learn from several caches).
Declared apart from `pipeline.config` so both it and the multi-task code read one definition."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.knobs import knob

MAIN = "main"  # the top-level pipeline (params.yaml's own task, data, teacher and cache) in a student's `tasks`
SAMPLING = ("proportional", "temperature", "round_robin")
ENCODER_INITS = ("first", "average")
# distill keys a multi-task student may set for one task's batches: each task's loss is its own module's; the
# optimizer, schedule, batch size and temperature are the student's, one for every task
TASK_LOSS_KEYS = (
    "alpha", "beta", "gamma", "attention_weight", "attention_loss", "value_weight", "logit_loss", "hidden_loss",
    "layer_map", "layer_pairs", "transfer",
)  # fmt: skip


@dataclass
class StudentSpec:
    """A student's shape and init; every other key of its params.yaml entry overrides the distill section for it."""

    num_layers: int = knob(help="transformer layers", gt=0)
    hidden_size: int = knob(help="hidden width", gt=0)
    init: str = knob(
        "random",
        "random; teacher (copy embeddings and init_layers of the teacher); or pretrained:<dir> (a local BERT checkpoint "
        "of the student's width: its own depth, or a deeper one whose init_layers are copied, e.g. a trained l3)",
    )
    num_heads: int | None = knob(None, "null = the teacher's for init teacher, else hidden_size / 64", gt=0)
    intermediate_size: int | None = knob(None, "null = the teacher's for init teacher, else 4 * hidden_size", gt=0)
    init_layers: list[int] | None = knob(
        None, "layers (1-based) copied from the teacher, or from a deeper pretrained:<dir>; null = uniform map", gt=0
    )
    seed: int | None = knob(None, "null = the top-level seed")
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"help": "distill keys set for this student only"})

    @property
    def heads(self) -> int:
        return self.num_heads if self.num_heads is not None else max(1, self.hidden_size // 64)

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.hidden_size

    def resolved(self, teacher_config: dict) -> StudentSpec:
        """Unset heads / intermediate size: the teacher's for init 'teacher' (so its layers fit), else hidden/64 and 4x hidden."""
        if self.init != "teacher":
            return dataclasses.replace(self, num_heads=self.heads, intermediate_size=self.ffn_size)
        heads = self.num_heads if self.num_heads is not None else teacher_config["num_attention_heads"]
        ffn = self.intermediate_size if self.intermediate_size is not None else teacher_config["intermediate_size"]
        return dataclasses.replace(self, num_heads=heads, intermediate_size=ffn)


@dataclass
class MultiTaskStudent(StudentSpec):
    """A student with one shared encoder and a head per task; every other key overrides the distill section for it."""

    tasks: dict[str, float] = knob(
        help=f"the caches it learns from, each with its weight (> 0) in the batch mix: `{MAIN}` (this params file's "
        "own pipeline) and names under multitask.tasks, e.g. {main: 1.0, conll2003: 1.0}; one task = a single-task "
        "student of that task's cache",
        factory=dict,
    )
    encoder_init: str = knob(
        "first",
        "the shared encoder (embeddings and layers) at the start: the first task's student's (its teacher's layers for "
        "init teacher), or the average of every task's (for init teacher: the tasks' teachers' layers averaged)",
        choices=ENCODER_INITS,
    )
    task_overrides: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "loss keys of the distill section set for one task's batches, e.g. {conll2003: {gamma: 0.0}} "
            f"(allowed: {', '.join(TASK_LOSS_KEYS)}); the optimizer and schedule stay the student's"
        },
    )

    def task_distill(self, cfg, task: str):
        """The distill settings task `task`'s batches train with: `cfg` with this student's overrides for it."""
        return dataclasses.replace(cfg, **self.task_overrides.get(task, {}))


@dataclass
class MultiTaskConfig:
    tasks: dict[str, str] = knob(
        help="other task pipelines, name -> its params file (its task, data, teacher and extract sections; each gets "
        "its own prepare-, teacher-, extract- and evaluate_teacher- stages); then run `python -m pipeline.dvcgraph`",
        factory=dict,
    )
    sampling: str = knob(
        "proportional",
        "which task each batch comes from, over an epoch of as many batches as all its tasks' own epochs together: "
        "proportional (share = weight x the task's batches), temperature (weight x batches^(1/temperature)), or "
        "round_robin (weight alone, the tasks' batches interleaved evenly)",
        choices=SAMPLING,
    )
    temperature: float = knob(2.0, "sampling temperature (sampling: temperature); 1 = proportional", gt=0)
    students: dict[str, MultiTaskStudent] = field(default_factory=dict)
