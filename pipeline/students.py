"""Students: a BertConfig of the student's shape on the teacher's vocabulary, built at random, from a local checkpoint,
or seeded with chosen teacher layers read straight from the teacher's safetensors file (no teacher model is built)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, BertConfig

from pipeline.config import StudentSpec
from pipeline.errors import PipelineError
from pipeline.layers import student_init_layers
from pipeline.models import from_safetensors, teacher_init_mismatch
from pipeline.tasks.heads import head_of

log = logging.getLogger(__name__)


def student_config(
    spec: StudentSpec, teacher_config: dict, label_names: list[str], task: str = "sequence_classification"
) -> BertConfig:
    """A BertConfig for the student: its own shape, the teacher's vocabulary, positions and labels (and head)."""
    return BertConfig(
        vocab_size=teacher_config["vocab_size"],
        max_position_embeddings=teacher_config.get("max_position_embeddings", 512),
        type_vocab_size=teacher_config.get("type_vocab_size", 2),
        pad_token_id=teacher_config.get("pad_token_id", 0),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.ffn_size,
        hidden_act=teacher_config.get("hidden_act", "gelu"),
        layer_norm_eps=teacher_config.get("layer_norm_eps", 1e-12),
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        architectures=[head_of(task).architecture],
    )


def build_student(
    spec: StudentSpec,
    teacher_config: dict,
    label_names: list[str],
    teacher_weights: Path | None,
    seed: int,
    task: str = "sequence_classification",
) -> tuple[torch.nn.Module, dict]:
    """Create the student (a sequence classifier, or for a masked-LM cache a BertForMaskedLM); with init 'teacher',
    copy embeddings, chosen layers, pooler and head from the teacher's safetensors file, reading only those tensors
    (no teacher model is built)."""
    torch.manual_seed(seed)
    spec = spec.resolved(teacher_config)
    if spec.hidden_size % spec.heads:
        raise PipelineError(
            f"params.yaml: student hidden_size {spec.hidden_size} is not divisible by its {spec.heads} attention "
            f"heads; set num_heads to a divisor of {spec.hidden_size}"
        )
    config = student_config(spec, teacher_config, label_names, task)
    info = {"init": spec.init}
    if spec.init.startswith("pretrained:"):
        return load_pretrained_student(spec.init.split(":", 1)[1], spec, teacher_config, label_names, task, info), info
    student = head_of(task).student_class()(config)
    if spec.init == "teacher":
        mismatch = teacher_init_mismatch(spec, teacher_config)
        if mismatch:
            raise PipelineError(
                f"params.yaml: init 'teacher' needs the teacher's widths ({mismatch}); match them or use init 'random'"
            )
        if teacher_weights is None or not Path(teacher_weights).is_file():
            raise PipelineError(
                f"{teacher_weights}: teacher weights needed for init 'teacher' are missing; run the teacher "
                "stage (or `dvc pull artifacts/teacher`) or use init 'random'"
            )
        layers = student_init_layers(spec.num_layers, spec.init_layers, teacher_config["num_hidden_layers"])
        info["teacher_layers"] = layers
        info["copied"] = copy_teacher_weights(student, Path(teacher_weights), layers)
    return student, info


def load_pretrained_student(
    path: str,
    spec: StudentSpec,
    teacher_config: dict,
    label_names: list[str],
    task: str = "sequence_classification",
    info: dict | None = None,
):
    """A local BERT checkpoint as the student (its classification head is new when it has none or another size; a
    masked-LM student's head is the checkpoint's, or new with output weights tied to its embeddings). A deeper
    checkpoint of the student's width gives its embeddings, `init_layers` of its layers (null = the uniform map),
    pooler and head, as init 'teacher' does from the teacher: e.g. a 2-layer student from a trained 3-layer one."""
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)  # students are plain BERT
    except OSError as exc:
        built_here = Path(path).parent.name == "students"  # another student's output: not a dep DVC orders by
        fix = (
            f"build it first: dvc repro distill@{Path(path).name}"
            if built_here
            else "point it at a local dir saved with save_pretrained"
        )
        raise PipelineError(
            f"{path}: student init 'pretrained:{path}' found no checkpoint config ({str(exc).splitlines()[0]}); {fix}"
        ) from None
    if config.model_type != "bert":
        raise PipelineError(f"{path}: pretrained student must be a BERT checkpoint, this is '{config.model_type}'")
    if config.vocab_size != teacher_config["vocab_size"]:
        raise PipelineError(
            f"{path}: vocabulary of {config.vocab_size} tokens but the cache's token ids come from a "
            f"{teacher_config['vocab_size']}-token vocabulary; use a checkpoint with the teacher's tokenizer"
        )
    if config.hidden_size != spec.hidden_size or config.num_hidden_layers < spec.num_layers:
        raise PipelineError(
            f"{path}: checkpoint has {config.num_hidden_layers} layers of width {config.hidden_size}; set the "
            f"student's hidden_size to {config.hidden_size} and num_layers to at most {config.num_hidden_layers}"
        )
    head = head_of(task)
    if config.num_hidden_layers > spec.num_layers:
        layers = student_init_layers(spec.num_layers, spec.init_layers, config.num_hidden_layers, f"checkpoint {path}")
        widths = dataclasses.replace(spec, num_heads=config.num_attention_heads, intermediate_size=config.intermediate_size)
        student = head.student_class()(student_config(widths, teacher_config, label_names, task))
        copied = copy_teacher_weights(student, checkpoint_weight_files(path), layers, source=f"checkpoint {path}")
        if info is not None:
            info.update(checkpoint_layers=layers, copied=copied)
        return student
    if head.name == "masked_lm":
        return from_safetensors(head.student_class(), path, trust_remote_code=False)
    return from_safetensors(head.student_class(), path, False, **head.head_config(label_names), ignore_mismatched_sizes=True)


def _teacher_key_map(student_keys: list[str], teacher_keys: set[str], layers: list[int]) -> dict[str, str]:
    """student state-dict key -> teacher key, for embeddings, the chosen layers, pooler and classifier."""
    prefix = next((p for p in ("bert.", "") if f"{p}embeddings.word_embeddings.weight" in teacher_keys), None)
    if prefix is None:
        raise PipelineError(
            "teacher weights have no BERT embeddings (bert.embeddings.*); init 'teacher' supports BERT teachers only"
        )
    mapping = {}
    for key in student_keys:
        if key.startswith("bert.encoder.layer."):
            idx, rest = key[len("bert.encoder.layer.") :].split(".", 1)
            source = f"{prefix}encoder.layer.{layers[int(idx)] - 1}.{rest}"
        elif key.startswith("bert."):
            source = prefix + key[len("bert.") :]
        else:
            source = key  # classifier.* (cls.* of a masked-LM head) lives at the top level
        if source in teacher_keys:
            mapping[key] = source
    return mapping


def checkpoint_weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a local checkpoint dir: its one model.safetensors, or the shards its
    model.safetensors.index.json names. Anything else (a pickled pytorch_model.bin, a missing shard) is refused."""
    path = Path(path)
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as exc:
            raise PipelineError(
                f"{index}: not a safetensors index ({exc!r}); re-save the checkpoint with save_pretrained"
            ) from None
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            raise PipelineError(f"{index}: names shard {missing[0]}, which is not in {path}; copy every shard beside the index")
        return [path / name for name in shards]
    raise PipelineError(
        f"{path}: no model.safetensors (or model.safetensors.index.json with its shards) to take student layers from; "
        "this tool reads only safetensors: re-save the checkpoint with save_pretrained(dir, safe_serialization=True)"
    )


def copy_teacher_weights(
    student: torch.nn.Module, weights: Path | list[Path], layers: list[int], source: str = "the teacher"
) -> list[str]:
    """Copy the mapped tensors of a deeper BERT (the teacher, or `source`) into the student in place, from one
    safetensors file or a checkpoint's shards; returns the student keys copied."""
    state = student.state_dict()
    files = [weights] if isinstance(weights, (str, Path)) else list(weights)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(f), framework="pt")) for f in files]
        where = {key: handle for handle in handles for key in handle.keys()}
        mapping = _teacher_key_map(list(state), set(where), layers)
        copied = []
        with torch.no_grad():
            for s_key, t_key in mapping.items():
                tensor = where[t_key].get_tensor(t_key)
                if tensor.shape == state[s_key].shape:
                    state[s_key].copy_(tensor)
                    copied.append(s_key)
    missing = [k for k in state if k.startswith("bert.") and k not in copied and "position_ids" not in k]
    if missing:
        log.warning(
            "student init: %d student tensors were not found in %s and stay random: %s", len(missing), source, missing[:5]
        )
    return copied
