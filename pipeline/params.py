"""Reading params.yaml into `pipeline.config`'s classes: types, the bounds and choices declared there, and the checks that
span several keys. Every mistake is refused with its dotted key. The params reference (docs/params.md) is printed from
the same declarations by `python -m pipeline.params_reference`."""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import DistillConfig, Params, StudentSpec, TeacherConfig, TeacherSpec
from pipeline.errors import PipelineError
from pipeline.knobs import check_bounds
from pipeline.specs import MAIN, TASK_LOSS_KEYS, MultiTaskConfig, MultiTaskStudent

# Letters, digits, '_' and '-': DVC reads a '.' in a stage key as nesting (students.l3.v2 would be a missing param).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
STUDENT_INITS = ("random", "teacher")
# task knobs that left the shared sections for their task's own section (a params.yaml written before says so)
MOVED = {
    "data.doc_stride": "question_answering.doc_stride",
    "data.max_context_chars": "question_answering.max_context_chars",
    "data.label_all_tokens": "token_classification.label_all_tokens",
    "extract.topk": "masked_lm.topk",
    "extract.mlm_probability": "masked_lm.mlm_probability",
    "distill.token_positions": "token_classification.token_positions",
    "distill.mlm_positions": "masked_lm.mlm_positions",
}


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (dataclasses built from dicts)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PipelineError(f"params.yaml: '{key}' must be a mapping of settings, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise PipelineError(f"params.yaml: '{key}' must be a list of {_type_name(item)}s, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise PipelineError(f"params.yaml: '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if value is None:
        raise PipelineError(f"params.yaml: '{key}' must be {_type_name(tp)}, not null")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise PipelineError(f"params.yaml: '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _unknown(key: str, known: list[str], prefix: str) -> PipelineError:
    section = "distill" if prefix.startswith("students.") else prefix
    if f"{section}.{key}" in MOVED:
        return PipelineError(
            f"params.yaml: '{prefix}.{key}' moved to '{MOVED[section + '.' + key]}' (the task's own section, one "
            "setting for every student); set it there"
        )
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
    return PipelineError(f"params.yaml: unknown key '{prefix + '.' if prefix else ''}{key}'{hint}")


def _kwargs(cls: type, raw: dict, prefix: str, skip: tuple = ()) -> dict:
    """Each declared field of `cls` found in `raw`, type-checked and bounds-checked; required ones must be there."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in skip:
            continue
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], dotted)
            check_bounds(kwargs[f.name], f.metadata, dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PipelineError(f"params.yaml: '{dotted}' is required")
    return kwargs


def _build(cls: type, raw: dict, prefix: str) -> Any:
    if cls in (StudentSpec, MultiTaskStudent):
        return _build_student(raw, prefix, cls)
    if cls is TeacherSpec:
        return _build_teacher(raw, prefix)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise _unknown(str(key), names, prefix)
    return cls(**_kwargs(cls, raw, prefix))


def _build_student(raw: dict, prefix: str, cls: type = StudentSpec) -> StudentSpec:
    """Shape keys build the spec; every other key must be a distill key and becomes one of its overrides."""
    distill_keys = [f.name for f in dataclasses.fields(DistillConfig)]
    shape = [f.name for f in dataclasses.fields(cls) if f.name != "overrides"]
    for key in raw:
        if key not in shape and key not in distill_keys:
            raise _unknown(str(key), shape + distill_keys, prefix)
    overrides = _kwargs(DistillConfig, {k: v for k, v in raw.items() if k not in shape}, prefix)
    if cls is not MultiTaskStudent:
        return cls(**_kwargs(cls, raw, prefix, skip=("overrides",)), overrides=overrides)
    per_task = raw.get("task_overrides") or {}
    if not isinstance(per_task, dict):
        raise PipelineError(f"params.yaml: '{prefix}.task_overrides' must map task names to loss keys, got {per_task!r}")
    tasks = {}
    for task, keys in per_task.items():
        k = f"{prefix}.task_overrides.{task}"
        if not isinstance(keys, dict):
            raise PipelineError(f"params.yaml: '{k}' must be a mapping of loss keys, e.g. {{gamma: 0.0}}, got {keys!r}")
        for key in keys:
            if key not in TASK_LOSS_KEYS:
                raise PipelineError(
                    f"params.yaml: '{k}.{key}' cannot differ by task (allowed: {', '.join(TASK_LOSS_KEYS)}); set it "
                    f"for the whole student under '{prefix}'"
                )
        tasks[str(task)] = _kwargs(DistillConfig, keys, k)
    skip = ("overrides", "task_overrides")
    return cls(**_kwargs(cls, raw, prefix, skip=skip), overrides=overrides, task_overrides=tasks)


def _build_teacher(raw: dict, prefix: str) -> TeacherSpec:
    """`seed` and any teacher key (the overrides of the teacher section for this teacher)."""
    teacher_keys = [f.name for f in dataclasses.fields(TeacherConfig)]
    for key in raw:
        if key != "seed" and key not in teacher_keys:
            raise _unknown(str(key), ["seed", *teacher_keys], prefix)
    overrides = _kwargs(TeacherConfig, {k: v for k, v in raw.items() if k != "seed"}, prefix)
    return TeacherSpec(**_kwargs(TeacherSpec, raw, prefix, skip=("overrides",)), overrides=overrides)


MULTI_TEACHER_TASKS = ("sequence_classification", "token_classification")  # dense logits: probabilities average


def _validate_teachers(params: Params) -> None:
    for name in [*params.students, *params.ensembles]:
        if name.startswith("teacher-"):
            raise PipelineError(f"params.yaml: model name '{name}': names starting 'teacher-' are the teachers'; rename it")
    for name in params.teachers:
        if not MODEL_NAME.match(name) or name in ("teacher", "ensemble") or name in params.students or name in params.ensembles:
            raise PipelineError(
                f"params.yaml: extra teacher name '{name}' must be letters, digits, '_' or '-', and not 'teacher' "
                "or a student's or ensemble's name"
            )
    for student in params.students:
        cfg, _ = params.distill_for(student)
        k = f"students.{student}" if "teachers" in params.students[student].overrides else "distill"
        unknown = [t for t in cfg.teachers if t != "teacher" and t not in params.teachers]
        if unknown:
            raise PipelineError(
                f"params.yaml: '{k}.teachers' names {unknown}, not under 'teachers' (have: {list(params.teachers)}); "
                "add them there or remove them"
            )
        if not cfg.teachers or cfg.teachers[0] != "teacher" or len(set(cfg.teachers)) != len(cfg.teachers):
            raise PipelineError(
                f"params.yaml: '{k}.teachers' must start with 'teacher' (its cache gives the hidden states) and "
                f"name each teacher once, got {cfg.teachers}"
            )
        if cfg.teacher_weights is not None and (len(cfg.teacher_weights) != len(cfg.teachers) or not sum(cfg.teacher_weights)):
            raise PipelineError(
                f"params.yaml: '{k}.teacher_weights' {cfg.teacher_weights} must give one weight per teacher in "
                f"{cfg.teachers}, not all 0 (or be null for equal weights)"
            )
        if len(cfg.teachers) > 1 and params.task not in MULTI_TEACHER_TASKS:
            raise PipelineError(
                f"params.yaml: '{k}.teachers': several teachers need dense logits to average ({', '.join(MULTI_TEACHER_TASKS)}); "
                f"task {params.task} has one teacher per student"
            )


def _validate_student(name: str, spec: StudentSpec) -> None:
    k = f"students.{name}"
    if not MODEL_NAME.match(name) or name == "teacher":
        raise PipelineError(
            f"params.yaml: student name '{name}' must be letters, digits, '_' or '-' (DVC reads a '.' as "
            "nesting) and not 'teacher'"
        )
    if spec.num_heads is not None and spec.hidden_size % spec.heads:
        raise PipelineError(
            f"params.yaml: '{k}.hidden_size' {spec.hidden_size} is not divisible by its {spec.heads} attention "
            f"heads; set '{k}.num_heads' to a divisor of {spec.hidden_size}"
        )
    if spec.init not in STUDENT_INITS and not (spec.init.startswith("pretrained:") and len(spec.init) > len("pretrained:")):
        raise PipelineError(
            f"params.yaml: '{k}.init' must be one of {STUDENT_INITS} or pretrained:<checkpoint dir>, got '{spec.init}'"
        )
    if spec.init_layers is not None and len(spec.init_layers) != spec.num_layers:
        raise PipelineError(
            f"params.yaml: '{k}.init_layers' names {len(spec.init_layers)} teacher layers for "
            f"{spec.num_layers} student layers; give exactly one per student layer"
        )
    _check_layer_pairs(spec.overrides.get("layer_pairs"), f"{k}.layer_pairs")


def _check_layer_pairs(pairs, key: str) -> None:
    if pairs is not None and any(len(pair) != 2 for pair in pairs):
        raise PipelineError(f"params.yaml: '{key}' must be a list of [student_layer, teacher_layer] pairs, got {pairs}")


def _validate_multitask(mt: MultiTaskConfig, params: Params) -> None:
    """Task names, and each multi-task student's tasks and weights (the task files themselves: pipeline.multitask_params)."""
    for name in mt.tasks:
        if not MODEL_NAME.match(name) or name == MAIN or name in params.teachers:
            raise PipelineError(
                f"params.yaml: task name 'multitask.tasks.{name}' must be letters, digits, '_' or '-', not '{MAIN}' "
                "(this file's own pipeline) and not an extra teacher's name"
            )
    for name, spec in mt.students.items():
        _validate_student(name, spec)
        k = f"multitask.students.{name}.tasks"
        if name in params.students or name in params.ensembles:
            raise PipelineError(f"params.yaml: 'multitask.students.{name}': '{name}' is also a student or ensemble; rename one")
        unknown = [t for t in spec.tasks if t != MAIN and t not in mt.tasks]
        if unknown or not spec.tasks:
            raise PipelineError(
                f"params.yaml: '{k}' names {unknown or 'no task'}: name '{MAIN}' or tasks under 'multitask.tasks' "
                f"(have: {[MAIN, *mt.tasks]}), each with a weight, e.g. {{{MAIN}: 1.0}}"
            )
        for task, keys in spec.task_overrides.items():
            _check_layer_pairs(keys.get("layer_pairs"), f"multitask.students.{name}.task_overrides.{task}.layer_pairs")
        stray = [t for t in spec.task_overrides if t not in spec.tasks]
        if stray:
            raise PipelineError(
                f"params.yaml: 'multitask.students.{name}.task_overrides' names {stray}, not among its tasks "
                f"{list(spec.tasks)}; name one of those or remove it"
            )
        bad = {t: w for t, w in spec.tasks.items() if not w > 0}
        if bad:
            raise PipelineError(f"params.yaml: '{k}' weights must be > 0, got {bad}; drop a task instead of weighting it 0")
        cfg, _ = params.distill_for(name)
        if cfg.teachers != ["teacher"]:
            raise PipelineError(
                f"params.yaml: 'multitask.students.{name}': a multi-task student learns from each task's own teacher; "
                "leave its teachers at [teacher]"
            )


def validate(params: Params) -> Params:
    """The checks that span keys: non-empty lists, student names and shapes, ensemble members."""
    if not params.extract.layers:
        raise PipelineError("params.yaml: 'extract.layers' is empty; name at least one hidden_states index (e.g. [6])")
    names = params.data.label_names
    if names is not None and len(set(names)) != len(names):
        raise PipelineError(f"params.yaml: 'data.label_names' has duplicates: {names}")
    pairs = params.distill.layer_pairs
    if pairs is not None and any(len(pair) != 2 for pair in pairs):
        raise PipelineError(
            f"params.yaml: 'distill.layer_pairs' must be a list of [student_layer, teacher_layer] pairs of "
            f"layers >= 0 (0 = embeddings), got {pairs}"
        )
    if not params.students:
        raise PipelineError("params.yaml: 'students' is empty; add at least one student (see README)")
    for name, spec in params.students.items():
        _validate_student(name, spec)
        cfg, _ = params.distill_for(name)
        if cfg.batch_tokens is not None and cfg.batch_tokens < cfg.nproc * params.data.max_length:
            key = "distill.batch_tokens" if "batch_tokens" not in spec.overrides else f"students.{name}.batch_tokens"
            raise PipelineError(
                f"params.yaml: '{key}' {cfg.batch_tokens} does not hold one row of data.max_length "
                f"{params.data.max_length} per process ({cfg.nproc}); use at least {cfg.nproc * params.data.max_length} "
                "(a GPU wants thousands), or null for batch_size rows per batch"
            )
    _validate_teachers(params)
    _validate_multitask(params.multitask, params)
    for name, ens in params.ensembles.items():
        if not MODEL_NAME.match(name) or name in params.students or name == "teacher":
            raise PipelineError(
                f"params.yaml: ensemble name '{name}' must be letters, digits, '_' or '-' and differ from the students' names"
            )
        unknown = [m for m in ens.members if m not in params.students]
        if unknown or len(ens.members) < 2:
            raise PipelineError(
                f"params.yaml: 'ensembles.{name}.members' must name at least two students from 'students' (unknown: {unknown})"
            )
        repeated = sorted({m for m in ens.members if ens.members.count(m) > 1})
        if repeated:
            raise PipelineError(
                f"params.yaml: 'ensembles.{name}.members' names {', '.join(repeated)} more than once; list each student "
                "once (to weight a member, train it under several seeds instead)"
            )
    return params


def params_from_dict(raw: dict | None) -> Params:
    if isinstance(raw, dict) and isinstance(raw.get("teacher"), dict) and "task" in raw["teacher"]:
        raise PipelineError(
            f"params.yaml: 'teacher.task' moved to the top-level key 'task'; write `task: {raw['teacher']['task']}` at "
            "the top of params.yaml and remove it from the teacher section"
        )
    return validate(_build(Params, raw or {}, ""))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, type-check and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: params file not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({exc}); fix the syntax") from None
    if raw is not None and not isinstance(raw, dict):
        raise PipelineError(f"{path}: top level must be a mapping of sections")
    return params_from_dict(raw)
