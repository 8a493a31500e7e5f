"""The scores contract: what `evaluate` writes to `artifacts/metrics/<name>.json` and `report` reads.

A scores file is a flat JSON object, so `dvc metrics show` lists it as it is. It carries `scores_format` (this
module's version: a reader refuses another one with the fix) and `headline`, the name of the task's metric the report
ranks by (`accuracy` for sequence classification and masked LM, `f1` for NER and QA). Every key is built here:

- `key(metric, split)`: a metric on dev (`f1`) or on the tuning split (`val_f1`);
- `mean_key` / `std_key` / `per_seed_key`: over a student's seed runs (`val_f1_mean`, `f1_per_seed`);
- `latency_key(b)`, `teacher_latency_key(b)`, `speedup_key(b)`: CPU latency at batch b, a teacher-shaped model's
  timed beside it, and their ratio;
- `retention`, `val_retention`, `retention_mean`, `retention_std`, `param_ratio`: against the teacher;
- `runtime_key(runtime, k)`: any of those for the model exported to another runtime (`onnx_int8.accuracy`,
  `onnx.latency_ms_b1`, `onnx_int8.size_mb`); the unprefixed keys are the PyTorch model's.

Nothing here imports a task or a model: the report reads scores with it and nothing heavier.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.splits import DEV, TUNE

SCORES_FORMAT = 1
EXPORTED_RUNTIMES = ("onnx", "onnx_int8")  # ONNX Runtime fp32 and dynamic int8 (PyTorch: unprefixed keys)


def key(metric: str, split: str = DEV) -> str:
    return metric if split == DEV else f"{split}_{metric}"


def mean_key(k: str) -> str:
    return f"{k}_mean"


def std_key(k: str) -> str:
    return f"{k}_std"


def per_seed_key(k: str) -> str:
    return f"{k}_per_seed"


def latency_key(batch: int) -> str:
    return f"latency_ms_b{batch}"


def teacher_latency_key(batch: int) -> str:
    return f"teacher_shaped_latency_ms_b{batch}"


def speedup_key(batch: int) -> str:
    return f"speedup_b{batch}"


def runtime_key(runtime: str, k: str) -> str:
    return k if runtime == "pytorch" else f"{runtime}.{k}"


def stamp(scores: dict, headline: str) -> dict:
    """The format version and the headline metric's name, first in the file."""
    return {"scores_format": SCORES_FORMAT, "headline": headline, **scores}


def read_scores(path: Path) -> dict:
    """A scores file, refused (one line, with the fix) when another version of `evaluate` wrote it."""
    scores = json.loads(Path(path).read_text())
    found = scores.get("scores_format")
    if found != SCORES_FORMAT:
        raise PipelineError(
            f"{path}: scores format {found} where this version reads {SCORES_FORMAT}; rerun the evaluate stages "
            "(`dvc repro --force evaluate_teacher` and `dvc repro`)"
        )
    return scores


def headline(scores: dict) -> str:
    return scores["headline"]


def choice_split(scores: dict) -> str:
    """The split choices are made on: the tuning split when the model was scored on one, else dev."""
    return TUNE if key(headline(scores), TUNE) in scores else DEV


def mean_score(scores: dict, split: str | None = None) -> float:
    """The headline metric on `split` (None: the choice split): the mean over seed runs when there are several."""
    k = key(headline(scores), split or choice_split(scores))
    return scores.get(mean_key(k), scores[k])


def seed_count(scores: dict) -> int:
    return len(scores.get("seeds") or [None])
