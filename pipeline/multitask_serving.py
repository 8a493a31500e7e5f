"""One multi-task student served from one encoder: its per-task checkpoints (`artifacts/students/<s>/<task>/`, each a
plain transformers model) loaded with their Auto classes, the shared embeddings and transformer layers held once in
memory, and one encoder pass answering every task's head (`OneEncoder`). `one_encoder_scores` measures what that saves
against serving the tasks' models separately: parameters, and CPU latency timed interleaved. It sits above the tasks,
beside `pipeline.evaluation`; nothing below imports it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.cache import TeacherCache
from pipeline.errors import PipelineError
from pipeline.evaluation import split_rows
from pipeline.latency import paired_latency_ms
from pipeline.models import load_saved_model
from pipeline.scores import latency_key
from pipeline.scoring import count_parameters
from pipeline.splits import DEV

SHARED = ("embeddings", "encoder")  # what a multi-task student's tasks share (`pipeline.multitask.MultiTaskModule`)


def load_task_models(student_dir: Path, tasks: list[str]) -> dict[str, nn.Module]:
    """Each task's checkpoint of a multi-task student, on the CPU in eval mode (not yet sharing memory)."""
    missing = [t for t in tasks if not (Path(student_dir) / t / "config.json").is_file()]
    if missing:
        raise PipelineError(
            f"{student_dir}: no checkpoint for task(s) {', '.join(missing)}; run its distill_multitask stage first"
        )
    return {t: load_saved_model(Path(student_dir) / t) for t in tasks}


def share_encoder(models: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Point every model's embeddings and transformer layers at the first one's, after checking they hold the same
    weights (a multi-task student's tasks do); each model still runs alone, with its own pooler and head."""
    (first_task, first), *rest = models.items()
    for task, model in rest:
        for part in SHARED:
            mine, theirs = getattr(model.base_model, part), getattr(first.base_model, part)
            a, b = mine.state_dict(), theirs.state_dict()
            if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
                raise PipelineError(
                    f"task {task}: its {part} differ from task {first_task}'s; these are not one multi-task student's "
                    "checkpoints (serve them separately)"
                )
            setattr(model.base_model, part, theirs)
    return models


class _Once(nn.Module):
    """A shared module run once per `OneEncoder` call: the tasks after the first reuse its output."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.memo, self.active = inner, None, False

    def forward(self, *args, **kwargs):
        if self.active and self.memo is not None:
            return self.memo
        out = self.inner(*args, **kwargs)
        if self.active:
            self.memo = out
        return out


class OneEncoder(nn.Module):
    """Every task of a multi-task student from one encoder pass: `forward` returns {task: that task's model output},
    equal to running each task's checkpoint alone. It takes the models over (their shared parts are wrapped)."""

    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        share_encoder(models)
        self.models = nn.ModuleDict(models)
        first = next(iter(models.values())).base_model
        self._once = [_Once(getattr(first, part)) for part in SHARED]
        for model in models.values():
            for part, once in zip(SHARED, self._once):
                setattr(model.base_model, part, once)
        self.config = first.config

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, **inputs) -> dict:
        for once in self._once:
            once.active, once.memo = True, None
        try:
            return {t: m(input_ids=input_ids, attention_mask=attention_mask, **inputs) for t, m in self.models.items()}
        finally:
            for once in self._once:
                once.active, once.memo = False, None


class Separately(nn.Module):
    """The tasks' models run one after the other, each with its own encoder: what serving single-task students costs."""

    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        self.models = nn.ModuleDict(models)

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, **inputs) -> dict:
        return {t: m(input_ids=input_ids, attention_mask=attention_mask, **inputs) for t, m in self.models.items()}


def one_encoder_scores(
    student_dir: Path, tasks: list[str], cache_dir: Path, latency_batch_sizes: list[int], repeats: int
) -> dict:
    """Parameters and median CPU latency of all `tasks` answered from one encoder pass, against their per-task models
    run separately (the same shapes as single-task students of the student's size), timed interleaved on the real dev
    rows of `cache_dir` (the first task's)."""
    token_lists = split_rows(TeacherCache(cache_dir, verify="lazy"), DEV)[1]
    one, apart = OneEncoder(load_task_models(student_dir, tasks)), Separately(load_task_models(student_dir, tasks))
    out = {"tasks": list(tasks), "params": count_parameters(one), "params_separate": count_parameters(apart)}
    pad_id = one.config.pad_token_id or 0
    for bs in latency_batch_sizes:
        ms_one, ms_apart = paired_latency_ms([one, apart], token_lists, bs, repeats, pad_id)
        out[latency_key(bs)], out[f"{latency_key(bs)}_separate"] = round(ms_one, 3), round(ms_apart, 3)
    return out
