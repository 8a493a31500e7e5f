"""The comparison report: one table (teacher, students, baselines, ensembles) and charts, from the metrics files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


SPEED_TIE = 0.05  # speedups this close to the best count as the same speed in the report's "fastest" pick


def svg_chart(
    series: dict[str, list[tuple[float, float]]],
    path: Path,
    *,
    x_label: str,
    y_label: str,
    title: str,
    lines: bool = True,
    width: int = 560,
    height: int = 340,
) -> None:
    """A small dependency-free SVG chart: one polyline (or points) per series, labelled axes, a legend."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        path.write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="10" y="25">{title}: '
            "no data</text></svg>\n"
        )
        return
    left, right, top, bottom = 60, 150, 30, 45
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 0.5, y1 + 0.5) if y0 == y1 else (y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0))
    sx = lambda x: left + (width - left - right) * (x - x0) / (x1 - x0)  # noqa: E731
    sy = lambda y: height - bottom - (height - top - bottom) * (y - y0) / (y1 - y0)  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="18" font-size="13">{title}</text>',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#444"/>',
        f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{x_label}</text>',
        f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" '
        f'text-anchor="middle">{y_label}</text>',
    ]
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{height - bottom + 14}" text-anchor="middle">{xv:.3g}</text>')
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    for k, (name, s) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        coords = [(sx(x), sy(y)) for x, y in s]
        if lines and len(coords) > 1:
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
                f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>'
            )
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.5 if lines else 4}" fill="{color}"/>' for x, y in coords]
        out.append(f'<text x="{width - right + 10}" y="{top + 14 * (k + 1)}" fill="{color}">{name}</text>')
    path.write_text("\n".join(out + ["</svg>"]) + "\n")


def load_metrics(metrics_dir: Path) -> dict[str, dict]:
    """name -> evaluation metrics (+ 'train' with the distill summary when there is one)."""
    models = {}
    for path in sorted(Path(metrics_dir).glob("*.json")):
        if path.stem.startswith(("train_", "extract")) or path.stem == "teacher_train":
            continue
        models[path.stem] = json.loads(path.read_text())
        train = Path(metrics_dir) / ("teacher_train.json" if path.stem == "teacher" else f"train_{path.stem}.json")
        if train.is_file():
            models[path.stem]["train"] = json.loads(train.read_text())
    return models


def _fmt(value, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def _n_seeds(m: dict) -> int:
    return len(m.get("seeds") or [None])


# the task's headline metric -> (its column, the other quality column's key and name); NER's headline is entity F1,
# extractive QA's is SQuAD F1 beside exact match
COLUMNS = {"accuracy": ("dev acc", "f1", "macro-F1"), "f1": ("entity F1", "accuracy", "token acc")}
SQUAD_COLUMNS = ("F1", "exact_match", "EM")


def columns(m: dict) -> tuple[str, str, str]:
    if m.get("metric", "").startswith("SQuAD"):
        return SQUAD_COLUMNS
    return COLUMNS.get(headline(m), (headline(m), "f1", "F1"))


def headline(m: dict) -> str:
    return m.get("headline", "accuracy")


TUNE = "val"  # pipeline.data.TUNE (the report imports nothing heavy)
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def mean_score(m: dict, split: str | None = None) -> float:
    """The task's headline metric on `split` ('dev', or the tuning split 'val'; None = the split choices are made on:
    val when the model was scored on one, else dev): the mean over seed runs when there are several, else the run's."""
    key = headline(m)
    if split is None:
        split = TUNE if f"{TUNE}_{key}" in m else "dev"
    key = key if split == "dev" else f"{split}_{key}"
    return m.get(f"{key}_mean", m[key])


def paired_difference(a: dict, b: dict, split: str) -> dict | None:
    """Model a minus model b on `split`, in points, over the seeds both were run under (seed i of a against seed i of
    b): mean, and the 95% t-interval of the mean paired difference when there are at least two pairs. None when either
    model lacks per-seed scores on the split."""
    key = headline(a) if split == "dev" else f"{split}_{headline(a)}"
    pa, pb = a.get(f"{key}_per_seed"), b.get(f"{key}_per_seed")
    if not pa or not pb:
        if key not in a or key not in b:
            return None
        return {"n": 1, "mean": 100 * (a[key] - b[key]), "low": None, "high": None}
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


def _diff_text(d: dict | None) -> str:
    if d is None:
        return "—"
    if d["low"] is None:
        return f"{d['mean']:+.2f} (one seed, no interval)"
    return f"{d['mean']:+.2f} [95% CI {d['low']:+.2f}, {d['high']:+.2f}; {d['n']} paired seeds]"


def _pm(m: dict, key: str, scale: float = 100.0, spec: str = ".2f") -> str:
    """'84.21 ± 0.30' over seed runs, or the single run's value ('—' for a figure the model does not have)."""
    if key not in m:
        return "—"
    if _n_seeds(m) > 1 and f"{key}_mean" in m:
        return f"{scale * m[f'{key}_mean']:{spec}} ± {scale * m[f'{key}_std']:{spec}}"
    return f"{scale * m[key]:{spec}}"


def _speedup(m: dict, teacher: dict) -> float | None:
    """Speedup at batch 32: timed interleaved against a teacher-shaped model when evaluate did so, else from the
    teacher's own latency measurement."""
    if m.get("speedup_b32"):
        return m["speedup_b32"]
    return teacher["latency_ms_b32"] / m["latency_ms_b32"] if m.get("latency_ms_b32") and teacher.get("latency_ms_b32") else None


def _same_shape(a: dict, b: dict) -> bool:
    return (
        "members" not in a
        and "members" not in b
        and (a.get("layers"), a.get("hidden_size"), a.get("params")) == (b.get("layers"), b.get("hidden_size"), b.get("params"))
    )


def _curve(csv_path: Path, key: str) -> list[tuple[float, float]]:
    if not csv_path.is_file():
        return []
    with open(csv_path) as f:
        return [(float(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key) not in (None, "")]


def _kd_vs_baseline(models: dict, top: str, base: str, tuned: bool, choice: str) -> list[str]:
    """The advice lines on the best KD student against its same-shape hard-label baseline: the paired difference on
    the choice split and on dev, and, when KD does not win on the choice split, that it does not and the likely reason."""
    split = TUNE if tuned else "dev"
    on_choice = paired_difference(models[top], models[base], split)
    lines = [
        f"- Distillation vs the hard-label baseline **{base}** (same shape): best KD student **{top}** "
        f"{_diff_text(on_choice)} points on {choice}"
        + (f"; on dev, for the record, {_diff_text(paired_difference(models[top], models[base], 'dev'))}." if tuned else ".")
    ]
    if on_choice is None:
        return lines
    if on_choice["mean"] <= 0:
        gap = 100 * (mean_score(models["teacher"]) - mean_score(models[base]))
        lines.append(
            f"- **{top} does not beat its hard-label baseline {base} on {choice}** ({on_choice['mean']:+.2f} points). "
            f"The teacher leads that baseline by only {gap:+.2f} points there: a student cannot learn more from the "
            "teacher than the teacher knows beyond the labels; a stronger teacher (or several) is the likely fix."
        )
    elif on_choice["low"] is not None and on_choice["low"] <= 0:
        lines.append(f"- The gain of {top} over {base} is within noise: its 95% interval includes 0.")
    if on_choice["low"] is None:
        lines.append(f"- One seed each: run ≥ 5 (`students.{top}.seeds`, `students.{base}.seeds`) for a paired interval.")
    elif on_choice["n"] < 5:
        lines.append(f"- Only {on_choice['n']} paired seeds: run ≥ 5 before trusting the interval.")
    return lines


def render_report(metrics_dir: Path, plots_dir: Path, out_dir: Path, kinds: dict[str, str]) -> str:
    """Write report.md and its charts to `out_dir`; returns the markdown. `kinds` maps a model name to its role.
    Accuracy, F1, retention and training time are mean ± sample std over a student's seed runs when it has several."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # only the models params name: a metrics file left by a student since removed from params is not reported
    models = {n: m for n, m in load_metrics(metrics_dir).items() if not kinds or n in kinds or n == "teacher"}
    if "teacher" not in models:
        raise FileNotFoundError(f"{metrics_dir}/teacher.json: no teacher metrics; run evaluate_teacher first")
    teacher = models["teacher"]
    key = headline(teacher)
    label, other, other_label = columns(teacher)
    t_acc = teacher[key]
    tuned = f"{TUNE}_{key}" in teacher  # choices are made on the tuning split; dev is the record
    choice = f"{TUNE} {label.removeprefix('dev ')}" if tuned else label
    t_choice = mean_score(teacher)
    order = ["teacher"] + sorted((n for n in models if n != "teacher"), key=lambda n: -mean_score(models[n]))
    val_head = f"{choice} | " if tuned else ""
    head = (
        f"| model | role | layers×hidden | params | size | seeds | {val_head}{label} | {other_label} | retention "
        "| latency b1 / b32 (ms) | speedup b32 | train time | peak RSS |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for n in order:
        m = models[n]
        train = m.get("train", {})
        shape = f"{m.get('layers', '?')}×{m.get('hidden_size', '?')}" if "members" not in m else "+".join(m["members"])
        ret = (
            "—"
            if n == "teacher"
            else (
                f"{100 * m[f'{key}_mean'] / t_acc:.1f} ± {100 * m[f'{key}_std'] / t_acc:.1f}%"
                if _n_seeds(m) > 1
                else f"{100 * m[key] / t_acc:.1f}%"
            )
        )
        speedup = _speedup(m, teacher)
        speed = "1.00×" if n == "teacher" else _fmt(speedup, ".2f", "×")
        lat = f"{_fmt(m.get('latency_ms_b1'), '.2f')} / {_fmt(m.get('latency_ms_b32'), '.1f')}"
        t_time = (
            f"{train['seconds_mean']:.0f} ± {train['seconds_std']:.0f} s"
            if len(train.get("seeds", [])) > 1
            else _fmt(train.get("seconds"), ".0f", " s")
        )
        rows.append(
            f"| {n} | {kinds.get(n, 'teacher' if n == 'teacher' else 'student')} | {shape} | {m['params'] / 1e6:.1f} M "
            f"| {m['size_mb']:.1f} MB | {_n_seeds(m)} | {_pm(m, f'{TUNE}_{key}') + ' | ' if tuned else ''}{_pm(m, key)} "
            f"| {_pm(m, other)} | {ret} | {lat} | {speed} "
            f"| {t_time} | {_fmt(train.get('peak_rss_mb'), '.0f', ' MB')} |"
        )
    students = [n for n in order if not kinds.get(n, "teacher" if n.startswith("teacher") else "").startswith("teacher")]
    near = [n for n in students if mean_score(models[n]) >= t_choice - 0.01 and kinds.get(n) != "ensemble"]
    # ranked by the speedup the line prints (timed interleaved with a teacher-shaped model), not by raw latency; speedups
    # within SPEED_TIE of the best are one speed (same-shape models differ only by timing noise): the more accurate wins
    top_speed = max((_speedup(models[n], teacher) or 0.0 for n in near), default=0.0)
    tied = [n for n in near if (_speedup(models[n], teacher) or 0.0) >= top_speed * (1 - SPEED_TIE)]
    fastest = max(tied, key=lambda n: (mean_score(models[n]), _speedup(models[n], teacher) or 0.0)) if tied else None
    best = max(students, key=lambda n: mean_score(models[n])) if students else None
    choice_key = f"{TUNE}_{key}" if tuned else key
    advice = [
        f"- Most accurate: **{best}** ({choice} {_pm(models[best], choice_key)}, "
        f"{100 * mean_score(models[best]) / t_choice:.1f}% of the teacher; dev for the record: {_pm(models[best], key)})."
        if best
        else "- No students yet."
    ]
    advice.append(
        f"- Fastest within 1 point of the teacher: **{fastest}** "
        f"({_fmt(_speedup(models[fastest], teacher), '.2f', '×')} faster at batch 32"
        f"{'; speedups within 5% count as one, the more accurate first' if len(tied) > 1 else ''})."
        if fastest
        else "- No single student is within 1 point of the teacher."
    )
    for base in (n for n in students if kinds.get(n, "").startswith("baseline")):
        rivals = [n for n in students if n != base and kinds.get(n) == "student" and _same_shape(models[n], models[base])]
        if rivals:
            top = max(rivals, key=lambda n: mean_score(models[n]))
            advice += _kd_vs_baseline(models, top, base, tuned, choice)
    teachers = [n for n in order if n != "teacher" and n not in students]
    if teachers:
        advice.append(
            "- Teachers alone: teacher "
            + f"{_pm(teacher, choice_key)}; "
            + "; ".join(f"{n} {_pm(models[n], choice_key)} ({100 * (mean_score(models[n]) - t_choice):+.2f})" for n in teachers)
            + f" ({choice}; the teacher ensemble averages their logits)."
        )
    seeded = [n for n in order if _n_seeds(models[n]) > 1]
    per_seed = []
    if seeded:
        per_seed = [
            f"{label} of each seed run (the first is the shipped checkpoint; an ensemble's k-th run averages "
            "its members' k-th runs):",
            "",
            f"| model | seeds | {label} per seed |",
            "|---|---|---|",
        ]
        if tuned:
            per_seed[2:4] = [f"| model | seeds | {choice} per seed | {label} per seed |", "|---|---|---|---|"]
        per_seed += [
            f"| {n} | {', '.join('+'.join(map(str, s)) if isinstance(s, list) else str(s) for s in models[n]['seeds'])} "
            + "".join(
                f"| {', '.join(f'{100 * a:.2f}' for a in models[n].get(f'{k}_per_seed', []))} "
                for k in ([f"{TUNE}_{key}"] if tuned else []) + [key]
            )
            + "|"
            for n in seeded
        ]
        per_seed.append("")
    svg_chart(
        {n: [(models[n]["params"] / 1e6, 100 * mean_score(models[n]))] for n in order},
        out_dir / "accuracy_vs_params.svg",
        x_label="parameters (M)",
        y_label=f"{label} (%)",
        title=f"{label} against size",
        lines=False,
    )
    svg_chart(
        {n: [(models[n]["latency_ms_b32"], 100 * mean_score(models[n]))] for n in order if models[n].get("latency_ms_b32")},
        out_dir / "accuracy_vs_latency.svg",
        x_label="CPU latency, batch 32 (ms)",
        y_label=f"{label} (%)",
        title=f"{label} against latency",
        lines=False,
    )
    svg_chart(
        {n: _curve(Path(plots_dir) / f"{n}.csv", "loss") for n in order},
        out_dir / "training_loss.svg",
        x_label="step",
        y_label="training loss",
        title="Learning curves",
    )
    svg_chart(
        {n: _curve(Path(plots_dir) / f"{n}.csv", f"eval_{key}") for n in order},
        out_dir / "dev_accuracy.svg",
        x_label="step",
        y_label=choice,
        title=f"{choice} at each epoch end",
    )
    metric = (
        [f"Quality metric: {teacher['metric']} on the cached dev rows (the '{label}' column).", ""] if "metric" in teacher else []
    )
    md = "\n".join(
        [
            "# Distillation report",
            "",
            *metric,
            (
                f"Which student to ship — chosen on the tuning split `{TUNE}` ({teacher.get(f'{TUNE}_rows', '?')} rows "
                "read from data.val, or carved from train: whole sentences for text tasks); dev is scored once, for the record:"
                if tuned
                else "Which student to ship (no tuning split: data.val_examples is 0, so these choices are made on dev "
                "and dev figures are optimistic):"
            ),
            *advice,
            "",
            *rows,
            "",
            *per_seed,
            f"{choice + ', ' if tuned else ''}{label}, {other_label}, retention (student ÷ teacher {label}) and "
            "train time are mean ± sample "
            "std over the seed runs where a model has more than one (`distill.seeds`), else the single run. "
            "Speedup = latency of a teacher-shaped model ÷ the model's, timed interleaved in one process at batch "
            "32 (CPU). Peak RSS is that of the model's own training stage (the teacher's is its fine-tuning).",
            "",
            "![accuracy vs params](accuracy_vs_params.svg) ![accuracy vs latency](accuracy_vs_latency.svg)",
            "",
            "![training loss](training_loss.svg) ![dev accuracy](dev_accuracy.svg)",
            "",
        ]
    )
    (out_dir / "report.md").write_text(md)
    return md
