"""The report's decisions, as pure functions of scores (`pipeline.scores`): which student is most accurate, which is
fastest within a point of the teacher, and whether distillation beats its same-shape hard-label baseline, paired by
seed with a 95% t-interval. Rendering them is `pipeline.report`'s job."""

from __future__ import annotations

from pipeline.scores import EXPORTED_RUNTIMES, headline, key, mean_score, per_seed_key, runtime_key, speedup_key
from pipeline.splits import DEV

SPEED_TIE = 0.05  # speedups this close to the best count as the same speed in the "fastest" pick
NEAR_TEACHER = 0.01  # "within 1 point of the teacher", as a fraction
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def speedup(m: dict, teacher: dict, batch: int = 32) -> float | None:
    """Speedup at `batch`: timed interleaved against a teacher-shaped model when evaluate did so, else from the
    teacher's own latency measurement."""
    if m.get(speedup_key(batch)):
        return m[speedup_key(batch)]
    mine, theirs = m.get(f"latency_ms_b{batch}"), teacher.get(f"latency_ms_b{batch}")
    return theirs / mine if mine and theirs else None


SHARED = ("scores_format", "headline", "metric", "params", "layers", "hidden_size", "members", "dev_rows", "val_rows")


def runtime_view(m: dict, runtime: str) -> dict | None:
    """A model's scores as measured in `runtime` (pytorch, onnx, onnx_int8), under the unprefixed keys, so every
    decision reads a deployed model as it reads a PyTorch one; None when the model was not exported to it. An exported
    model is the shipped checkpoint: its scores are that one run's (no seed mean)."""
    if runtime == "pytorch":
        return m
    prefix = runtime_key(runtime, "")
    view = {k.removeprefix(prefix): v for k, v in m.items() if k.startswith(prefix)}
    return {**{k: m[k] for k in SHARED if k in m}, **view, "runtime": runtime} if view else None


def deployments(models: dict[str, dict], names: list[str]) -> dict[str, dict]:
    """'<name> · <runtime>' -> scores, for each named model in each runtime it was measured in (PyTorch first)."""
    out = {}
    for n in names:
        for runtime in ("pytorch", *EXPORTED_RUNTIMES):
            view = runtime_view(models[n], runtime)
            if view is not None:
                out[f"{n} · {runtime}"] = view
    return out


def same_shape(a: dict, b: dict) -> bool:
    return (
        "members" not in a
        and "members" not in b
        and (a.get("layers"), a.get("hidden_size"), a.get("params")) == (b.get("layers"), b.get("hidden_size"), b.get("params"))
    )


def most_accurate(models: dict[str, dict], candidates: list[str]) -> str | None:
    """The candidate with the highest headline metric on the choice split."""
    return max(candidates, key=lambda n: mean_score(models[n])) if candidates else None


def fastest_near_teacher(models: dict[str, dict], candidates: list[str], teacher: dict) -> tuple[str | None, int]:
    """The fastest candidate whose headline metric is within a point of the teacher's (on the choice split), ranked by
    the speedup at batch 32; speedups within SPEED_TIE of the best are one speed and the more accurate wins. Returns
    (name or None, how many were tied)."""
    near = [n for n in candidates if mean_score(models[n]) >= mean_score(teacher) - NEAR_TEACHER]
    top = max((speedup(models[n], teacher) or 0.0 for n in near), default=0.0)
    tied = [n for n in near if (speedup(models[n], teacher) or 0.0) >= top * (1 - SPEED_TIE)]
    if not tied:
        return None, 0
    return max(tied, key=lambda n: (mean_score(models[n]), speedup(models[n], teacher) or 0.0)), len(tied)


def paired_difference(a: dict, b: dict, split: str) -> dict | None:
    """Model a minus model b on `split`, in points, over the seeds both were run under (seed i of a against seed i of
    b): mean, and the 95% t-interval of the mean paired difference when there are at least two pairs. None when either
    model lacks scores on the split."""
    k = key(headline(a), split)
    pa, pb = a.get(per_seed_key(k)), b.get(per_seed_key(k))
    if not pa or not pb:
        if k not in a or k not in b:
            return None
        return {"n": 1, "mean": 100 * (a[k] - b[k]), "low": None, "high": None}
    by_seed = dict(zip(b.get("seeds", []), pb))
    diffs = [100 * (x - by_seed[s]) for s, x in zip(a.get("seeds", []), pa) if s in by_seed]
    if not diffs:
        return None
    n, mean = len(diffs), sum(diffs) / len(diffs)
    if n < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None}
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5
    half = (T975[n - 2] if n - 1 <= len(T975) else 1.96) * sd / n**0.5
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half}


def kd_verdict(student: dict, baseline: dict, teacher: dict, split: str) -> dict:
    """KD student against its same-shape hard-label baseline on the choice `split` (and on dev): the paired
    differences, whether KD wins, whether the win is within noise, and the teacher's own lead over the baseline
    (the most a student can learn from it beyond the labels)."""
    on_split = paired_difference(student, baseline, split)
    verdict = {
        "on_split": on_split,
        "on_dev": paired_difference(student, baseline, DEV) if split != DEV else None,
        "beats": on_split is not None and on_split["mean"] > 0,
        "within_noise": on_split is not None and on_split["low"] is not None and on_split["low"] <= 0,
        "teacher_lead": 100 * (mean_score(teacher) - mean_score(baseline)),
    }
    return verdict
