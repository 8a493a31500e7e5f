"""Evaluation of saved models: quality on the cache's dev and val rows (through each task's scorer), size and CPU
latency, measured the same way for the teacher, every student and ensembles. It sits above the tasks; nothing below
it (data, cache, tasks, training) imports it, so editing it never rebuilds the teacher or the cache."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from pipeline.cache import TeacherCache
from pipeline.cache.schema import TEACHER_CONFIG
from pipeline.errors import PipelineError
from pipeline.latency import paired_latency_ms
from pipeline.models import load_saved_model, seed_model_dirs
from pipeline.onnx_models import OnnxModel, exported_runtimes
from pipeline.scores import (
    EXPORTED_RUNTIMES,
    headline,
    key,
    latency_key,
    mean_key,
    per_seed_key,
    runtime_key,
    speedup_key,
    stamp,
    std_key,
    teacher_latency_key,
)
from pipeline.scoring import count_parameters
from pipeline.splits import DEV, TUNE
from pipeline.tasks import task_of_cache
from pipeline.tasks.heads import head_of, head_of_model
from pipeline.tasks.scorer import task_scorer


def weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def teacher_shaped_model(cache_dir: Path, num_labels: int) -> torch.nn.Module:
    """A classifier with the teacher's architecture (from the cache's teacher_config.json) and random weights: the
    latency reference for speedups. Dense CPU inference time does not depend on weight values, so students are timed
    interleaved with it in one process without the teacher's weights (stage two never needs them)."""
    raw = json.loads((Path(cache_dir) / TEACHER_CONFIG).read_text())
    config = AutoConfig.for_model(**{k: v for k, v in raw.items() if k not in ("architectures", "id2label", "label2id")})
    config.num_labels = num_labels
    with torch.random.fork_rng():  # the caller's RNG stream stays untouched
        torch.manual_seed(0)
        return head_of_model(AutoConfig.for_model(**raw)).auto_class().from_config(config).to("cpu").eval()


def _quality(model: torch.nn.Module, cache, tokens: list[np.ndarray], rows: list[dict], batch_size: int, pad_id: int) -> dict:
    """The metrics of the model's task (its scorer facet), refused for a cache made by a teacher of another task."""
    task, cache_task = head_of_model(model.config).name, task_of_cache(cache.manifest)
    if task != cache_task:
        raise PipelineError(
            f"{cache.cache_dir}: the model has a {task} head but the cache was made by a {cache_task} "
            "teacher; evaluate it against a cache of its own task"
        )
    return task_scorer(task).score(model, rows, tokens, batch_size, pad_id, cache=cache)


def split_rows(cache, split: str) -> tuple[list[dict], list[np.ndarray]]:
    """A cached split's rows (the fields scoring needs) and their token ids."""
    ds = cache.split(split, columns=task_scorer(task_of_cache(cache.manifest)).columns(cache.manifest))
    rows = [ds[i] for i in range(len(ds))]
    return rows, [r["input_ids"] for r in rows]


def _score(
    model: torch.nn.Module,
    cache_dir: Path,
    batch_size: int,
    latency_batch_sizes: list[int],
    latency_repeats: int,
    reference: torch.nn.Module | None = None,
    runtimes: dict[str, torch.nn.Module] | None = None,
) -> dict:
    """The scores (`pipeline.scores`) of a model: its task's metrics on the cache's dev rows and, under `val_`, its
    tuning rows; median CPU latency per batch size; with a `reference` model, both timed interleaved and the speedup
    = reference latency / model latency. Each of `runtimes` (the model exported: `pipeline.onnx_models`) is scored
    the same way under its runtime's keys and timed interleaved with them; without a reference its speedup is over
    the PyTorch model itself (the teacher's runtimes: speedups over the PyTorch teacher)."""
    cache = TeacherCache(cache_dir, verify="lazy")
    pad_id = model.config.pad_token_id or 0
    rows, tokens = split_rows(cache, DEV)
    val = split_rows(cache, TUNE) if TUNE in cache.splits else None  # the tuning split: what choices are made on
    result = stamp({}, head_of(task_of_cache(cache.manifest)).headline)
    runtimes = {"pytorch": model, **(runtimes or {})}
    for name, runnable in runtimes.items():
        result.update({runtime_key(name, k): v for k, v in _quality(runnable, cache, tokens, rows, batch_size, pad_id).items()})
        if val is not None:
            scores = _quality(runnable, cache, val[1], val[0], batch_size, pad_id)
            result.update({runtime_key(name, key(k, TUNE)): v for k, v in scores.items() if isinstance(v, float)})
    result.update({"dev_rows": len(rows), "params": count_parameters(model), "cpu_threads": torch.get_num_threads()})
    if val is not None:
        result[key("rows", TUNE)] = len(val[0])
    for bs in latency_batch_sizes:
        timed = list(runtimes.values()) + ([reference] if reference is not None else [])
        latencies = paired_latency_ms(timed, tokens, bs, latency_repeats, pad_id)
        ref = latencies[-1] if reference is not None else None
        for name, ms in zip(runtimes, latencies):
            result[runtime_key(name, latency_key(bs))] = round(ms, 3)
            if ref is not None:
                result[runtime_key(name, speedup_key(bs))] = round(ref / ms, 3)
            elif name != "pytorch":
                result[runtime_key(name, speedup_key(bs))] = round(latencies[0] / ms, 3)
        if ref is not None:
            result[teacher_latency_key(bs)] = round(ref, 3)
    return result


SPREAD = ("accuracy", "f1", "teacher_agreement")  # besides the headline: the metrics given a mean and std over seeds


def _seed_spread(result: dict, per_seed: list[tuple[int, dict]]) -> dict:
    """Add the seeds, each seed run's headline (and accuracy) and the mean +- sample std of the main metrics."""
    result["seeds"] = [s for s, _ in per_seed]
    listed = dict.fromkeys(("accuracy", headline(result)))
    for k in [key(m, split) for split in (DEV, TUNE) for m in listed if key(m, split) in result]:
        result[per_seed_key(k)] = [round(r[k], 6) for _, r in per_seed]
    spread = dict.fromkeys((*SPREAD, headline(result)))
    for k in [key(m, split) for split in (DEV, TUNE) for m in spread if key(m, split) in result]:
        values = [r[k] for _, r in per_seed]
        result[mean_key(k)] = round(statistics.mean(values), 6)
        result[std_key(k)] = round(statistics.stdev(values), 6) if len(values) > 1 else 0.0
    return result


def evaluate_saved_model(
    model_dir: Path,
    cache_dir: Path,
    *,
    batch_size: int,
    latency_batch_sizes: list[int],
    latency_repeats: int,
    against_teacher_shape: bool = False,
    export_dir: Path | None = None,
) -> dict:
    """Dev accuracy/F1, size and CPU latency of a saved classifier (its shipped checkpoint); for a student trained
    under several seeds also each seed run's accuracy and the mean +- std. `against_teacher_shape` times it
    interleaved with a teacher-shaped model and reports speedups from that one measurement. With `export_dir` (the
    export stage's), the exported ONNX fp32 and int8 models are scored and timed beside it, under their runtime's keys."""
    runs = seed_model_dirs(model_dir)
    model = load_saved_model(model_dir)
    reference = teacher_shaped_model(cache_dir, model.config.num_labels) if against_teacher_shape else None
    exported = exported_runtimes(export_dir) if export_dir is not None else {}
    if export_dir is not None and not exported:
        raise PipelineError(f"{export_dir}: no exported model; run the export stage first (`dvc repro`)")
    runtimes = {name: OnnxModel(path, model.config) for name, path in exported.items()}
    result = _score(model, cache_dir, batch_size, latency_batch_sizes, latency_repeats, reference, runtimes)
    result.update({runtime_key(name, "size_mb"): round(path.stat().st_size / 1e6, 2) for name, path in exported.items()})
    result.update(
        {
            "size_mb": round(weights_bytes(model_dir) / 1e6, 2),
            "layers": model.config.num_hidden_layers,
            "hidden_size": model.config.hidden_size,
        }
    )
    if runs[0][0] is not None:
        per_seed = [(runs[0][0], result)] + [(s, _score(load_saved_model(d), cache_dir, batch_size, [], 0)) for s, d in runs[1:]]
        _seed_spread(result, per_seed)
    return result


def compare_to_teacher(student: dict, teacher: dict) -> dict:
    """Retention (student / teacher headline metric, and F1; and of the seed mean when there is one) and, for batch
    sizes not already timed against a teacher-shaped model, latency speedups from the teacher's own scores."""
    ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    k = headline(student)  # retention is of the task's headline metric (entity F1 for NER, SQuAD F1 for QA)
    out = {"retention": ratio(student[k], teacher[k]), "param_ratio": round(student["params"] / teacher["params"], 4)}
    if "f1" in student and "f1" in teacher:  # a masked-LM model has masked-token accuracy and teacher agreement instead
        out["f1_retention"] = ratio(student["f1"], teacher["f1"])
    if key(k, TUNE) in student and key(k, TUNE) in teacher:
        out[key("retention", TUNE)] = ratio(student[key(k, TUNE)], teacher[key(k, TUNE)])
    if mean_key(k) in student:
        out[mean_key("retention")] = ratio(student[mean_key(k)], teacher[k])
        out[std_key("retention")] = ratio(student[std_key(k)], teacher[k])
    for runtime in EXPORTED_RUNTIMES:  # an exported model's quality against the PyTorch teacher's
        if runtime_key(runtime, k) in student:
            out[runtime_key(runtime, "retention")] = ratio(student[runtime_key(runtime, k)], teacher[k])
    for bs in sorted(int(n.removeprefix("latency_ms_b")) for n in student if n.startswith("latency_ms_b")):
        for runtime in ("pytorch", *EXPORTED_RUNTIMES):
            mine, speedup = runtime_key(runtime, latency_key(bs)), runtime_key(runtime, speedup_key(bs))
            if teacher.get(latency_key(bs)) and mine in student and speedup not in student:
                out[speedup] = round(teacher[latency_key(bs)] / student[mine], 3)
    return out


class EnsembleClassifier(torch.nn.Module):
    """Averages the logits of several classifiers; evaluated exactly like a single model."""

    def __init__(self, members: list[torch.nn.Module]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, input_ids, attention_mask, **inputs):
        """The members' mean logits (start and end logits of QA members)."""
        from types import SimpleNamespace

        outs = [m(input_ids=input_ids, attention_mask=attention_mask, **inputs) for m in self.members]
        names = ("start_logits", "end_logits") if hasattr(outs[0], "start_logits") else ("logits",)
        return SimpleNamespace(**{n: torch.stack([getattr(o, n).float() for o in outs]).mean(0) for n in names})


def evaluate_ensemble(
    member_dirs: list[Path],
    cache_dir: Path,
    *,
    batch_size: int,
    latency_batch_sizes: list[int],
    latency_repeats: int,
    against_teacher_shape: bool = False,
) -> dict:
    """Accuracy/F1, total params and size, and CPU latency (all members run) of the logit-averaging ensemble of the
    members' shipped checkpoints; when the members were trained under several seeds, the ensemble of each seed index
    (members' k-th runs) is scored too and the mean +- std reported."""
    runs = [seed_model_dirs(d) for d in member_dirs]
    members = [load_saved_model(d) for d in member_dirs]
    if len({m.config.num_labels for m in members}) != 1:
        raise PipelineError(f"ensemble members disagree on the number of labels: {[str(d) for d in member_dirs]}")
    reference = teacher_shaped_model(cache_dir, members[0].config.num_labels) if against_teacher_shape else None
    result = _score(EnsembleClassifier(members).eval(), cache_dir, batch_size, latency_batch_sizes, latency_repeats, reference)
    result.update(
        {
            "members": [Path(d).name for d in member_dirs],
            "size_mb": round(sum(weights_bytes(d) for d in member_dirs) / 1e6, 2),
            "layers": sum(m.config.num_hidden_layers for m in members),
        }
    )
    n_seeds = min(len(r) for r in runs)
    if all(r[0][0] is not None for r in runs) and n_seeds > 1:
        per_seed = [(0, result)] + [
            (k, _score(EnsembleClassifier([load_saved_model(r[k][1]) for r in runs]).eval(), cache_dir, batch_size, [], 0))
            for k in range(1, n_seeds)
        ]
        _seed_spread(result, per_seed)
        result["seeds"] = [[r[k][0] for r in runs] for k in range(n_seeds)]  # the members' seeds in each ensemble
    return result
