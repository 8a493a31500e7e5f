"""The comparison report: one table (teacher, students, baselines, ensembles), the decisions of `pipeline.decisions`
in words, and the charts of `pipeline.charts`, from the scores files (`pipeline.scores`)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.charts import write_charts
from pipeline.decisions import deployments, fastest_near_teacher, kd_verdict, most_accurate, same_shape, speedup
from pipeline.scores import choice_split, headline, key, mean_key, mean_score, per_seed_key, read_scores, seed_count, std_key
from pipeline.splits import DEV, TUNE


def load_metrics(metrics_dir: Path, train_dir: Path | None = None) -> dict[str, dict]:
    """name -> scores (+ 'train' with the training summary when there is one: the teacher's beside its scores, the
    students' in `train_dir`, by default the same dir)."""
    models = {}
    for path in sorted(Path(metrics_dir).glob("*.json")):
        if path.stem.startswith(("train_", "extract")) or path.stem == "teacher_train":
            continue
        models[path.stem] = read_scores(path)
        own = Path(metrics_dir) if path.stem == "teacher" else Path(train_dir or metrics_dir)
        train = own / ("teacher_train.json" if path.stem == "teacher" else f"train_{path.stem}.json")
        if train.is_file():
            models[path.stem]["train"] = json.loads(train.read_text())
    return models


# the task's headline metric -> (its column, the other quality column's key and name); NER's headline is entity F1,
# extractive QA's is SQuAD F1 beside exact match
COLUMNS = {"accuracy": ("dev acc", "f1", "macro-F1"), "f1": ("entity F1", "accuracy", "token acc")}
SQUAD_COLUMNS = ("F1", "exact_match", "EM")


RUNTIME_WORDS = {"pytorch": "in PyTorch", "onnx": "as ONNX fp32 (ONNX Runtime)", "onnx_int8": "as ONNX int8 (ONNX Runtime)"}


def columns(m: dict) -> tuple[str, str, str]:
    if m.get("metric", "").startswith("SQuAD"):
        return SQUAD_COLUMNS
    return COLUMNS.get(headline(m), (headline(m), "f1", "F1"))


def _fmt(value, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def _pct(part, whole) -> float | None:
    """100 × part ÷ whole, or None where there is no whole to be a share of (a teacher that scored 0 on a tiny set)."""
    return None if part is None or not whole else 100 * part / whole


def _pm(m: dict, k: str, scale: float = 100.0, spec: str = ".2f") -> str:
    """'84.21 ± 0.30' over seed runs, or the single run's value ('—' for a figure the model does not have)."""
    if k not in m:
        return "—"
    if seed_count(m) > 1 and mean_key(k) in m:
        return f"{scale * m[mean_key(k)]:{spec}} ± {scale * m[std_key(k)]:{spec}}"
    return f"{scale * m[k]:{spec}}"


def _diff_text(d: dict | None) -> str:
    if d is None:
        return "—"
    if d["low"] is None:
        return f"{d['mean']:+.2f} (one seed, no interval)"
    return f"{d['mean']:+.2f} [95% CI {d['low']:+.2f}, {d['high']:+.2f}; {d['n']} paired seeds]"


def _kd_lines(models: dict, top: str, base: str, split: str, choice: str) -> list[str]:
    """The advice on the best KD student against its same-shape hard-label baseline (`decisions.kd_verdict`)."""
    v = kd_verdict(models[top], models[base], models["teacher"], split)
    on_dev = f"; on dev, for the record, {_diff_text(v['on_dev'])}." if split != DEV else "."
    lines = [
        f"- Distillation vs the hard-label baseline **{base}** (same shape): best KD student **{top}** "
        f"{_diff_text(v['on_split'])} points on {choice}{on_dev}"
    ]
    d = v["on_split"]
    if d is None:
        return lines
    if not v["beats"]:
        lines.append(
            f"- **{top} does not beat its hard-label baseline {base} on {choice}** ({d['mean']:+.2f} points). "
            f"The teacher leads that baseline by only {v['teacher_lead']:+.2f} points there: a student cannot learn more "
            "from the teacher than the teacher knows beyond the labels; a stronger teacher (or several) is the likely fix."
        )
    elif v["within_noise"]:
        lines.append(f"- The gain of {top} over {base} is within noise: its 95% interval includes 0.")
    if d["low"] is None:
        lines.append(f"- One seed each: run ≥ 5 (`students.{top}.seeds`, `students.{base}.seeds`) for a paired interval.")
    elif d["n"] < 5:
        lines.append(f"- Only {d['n']} paired seeds: run ≥ 5 before trusting the interval.")
    return lines


def _table(models: dict, order: list[str], kinds: dict[str, str], tuned: bool, label: str, other_label: str, choice: str):
    teacher = models["teacher"]
    k, other = headline(teacher), columns(teacher)[1]
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
        if n == "teacher":
            ret = "—"
        elif seed_count(m) > 1:
            ret = f"{_fmt(_pct(m[mean_key(k)], teacher[k]), '.1f')} ± {_fmt(_pct(m[std_key(k)], teacher[k]), '.1f', '%')}"
        else:
            ret = _fmt(_pct(m[k], teacher[k]), ".1f", "%")
        speed = "1.00×" if n == "teacher" else _fmt(speedup(m, teacher), ".2f", "×")
        lat = f"{_fmt(m.get('latency_ms_b1'), '.2f')} / {_fmt(m.get('latency_ms_b32'), '.1f')}"
        t_time = (
            f"{train['seconds_mean']:.0f} ± {train['seconds_std']:.0f} s"
            if len(train.get("seeds", [])) > 1
            else _fmt(train.get("seconds"), ".0f", " s")
        )
        rows.append(
            f"| {n} | {kinds.get(n, 'teacher' if n == 'teacher' else 'student')} | {shape} | {m['params'] / 1e6:.1f} M "
            f"| {m['size_mb']:.1f} MB | {seed_count(m)} | {_pm(m, key(k, TUNE)) + ' | ' if tuned else ''}{_pm(m, k)} "
            f"| {_pm(m, other)} | {ret} | {lat} | {speed} "
            f"| {t_time} | {_fmt(train.get('peak_rss_mb'), '.0f', ' MB')} |"
        )
    return rows


MULTITASK = "multi-task student"  # the role of a student of several tasks (`stages/report.py`)


def _multitask_lines(models: dict, kinds: dict[str, str], choice: str) -> list[str]:
    """Each multi-task student against the best single-task student of its shape on this task (kept = its score ÷
    theirs), and what serving its tasks from one encoder saves, when this task's evaluation measured it."""
    lines = []
    for n in (n for n in models if kinds.get(n, "").startswith(MULTITASK)):
        m, k = models[n], headline(models[n])
        rivals = [r for r in models if kinds.get(r) == "student" and same_shape(models[r], m)]
        if rivals:
            r = most_accurate(models, rivals)
            lines.append(
                f"- Multi-task **{n}** ({kinds[n].split('(')[-1].rstrip(')')}) keeps "
                f"{_fmt(_pct(mean_score(m), mean_score(models[r])), '.1f', '%')} of the best single-task student of its shape, "
                f"**{r}**, on {choice} ({_pm(m, key(k, choice_split(m)))} vs {_pm(models[r], key(k, choice_split(m)))}); "
                f"dev {_pm(m, k)} vs {_pm(models[r], k)}."
            )
        one = m.get("one_encoder")
        if one:
            lat = "; ".join(
                f"batch {bs}: {one[f'latency_ms_b{bs}']:.2f} ms vs {one[f'latency_ms_b{bs}_separate']:.2f} ms"
                for bs in (1, 32)
                if f"latency_ms_b{bs}" in one
            )
            lines.append(
                f"- **{n}** serves {', '.join(one['tasks'])} from one encoder: {one['params'] / 1e6:.1f} M parameters "
                f"against {one['params_separate'] / 1e6:.1f} M for its per-task models separately (each the shape of a "
                f"single-task student); all tasks per batch {lat} (CPU, timed interleaved on this task's dev rows)."
            )
    return lines


def _deployed_table(shipped: dict[str, dict], teacher: dict, tuned: bool, label: str, choice: str) -> list[str]:
    """Every model in every runtime it was measured in: size on disk, quality, latency and speedup over the PyTorch
    teacher (`decisions.deployments`)."""
    if not any("runtime" in m for m in shipped.values()):
        return []
    k = headline(teacher)
    val_head = f"{choice} | " if tuned else ""
    lines = [
        "As deployed — each model in PyTorch and exported to ONNX Runtime fp32 and int8 (dynamic quantization), "
        "scored on the same rows with the same metric code (`artifacts/exports/<name>`):",
        "",
        f"| model · runtime | size | {val_head}{label} | retention | latency b1 / b32 (ms) | speedup b1 / b32 |",
        "|---|---|---|---|---|---|" + ("---|" if tuned else ""),
    ]
    for n, m in shipped.items():
        size = m.get("size_mb")
        quality = (f"{100 * m[key(k, TUNE)]:.2f} | " if tuned and key(k, TUNE) in m else "— | " if tuned else "") + (
            f"{100 * m[k]:.2f}" if k in m else "—"
        )
        speed_b1 = 1.0 if n == "teacher · pytorch" else speedup(m, teacher, 1)
        speed_b32 = 1.0 if n == "teacher · pytorch" else speedup(m, teacher, 32)
        lines.append(
            f"| {n} | {_fmt(size, '.1f', ' MB')} | {quality} | {_fmt(_pct(m.get(k), teacher[k]), '.1f', '%')} "
            f"| {_fmt(m.get('latency_ms_b1'), '.2f')} / {_fmt(m.get('latency_ms_b32'), '.1f')} "
            f"| {_fmt(speed_b1, '.2f', '×')} / {_fmt(speed_b32, '.2f', '×')} |"
        )
    return lines + [""]


def _per_seed(models: dict, order: list[str], tuned: bool, label: str, choice: str) -> list[str]:
    seeded = [n for n in order if seed_count(models[n]) > 1]
    if not seeded:
        return []
    k = headline(models["teacher"])
    lines = [
        f"{label} of each seed run (the first is the shipped checkpoint; an ensemble's k-th run averages "
        "its members' k-th runs):",
        "",
        f"| model | seeds | {label} per seed |",
        "|---|---|---|",
    ]
    if tuned:
        lines[2:4] = [f"| model | seeds | {choice} per seed | {label} per seed |", "|---|---|---|---|"]
    lines += [
        f"| {n} | {', '.join('+'.join(map(str, s)) if isinstance(s, list) else str(s) for s in models[n]['seeds'])} "
        + "".join(
            f"| {', '.join(f'{100 * a:.2f}' for a in models[n].get(per_seed_key(c), []))} "
            for c in ([key(k, TUNE)] if tuned else []) + [k]
        )
        + "|"
        for n in seeded
    ]
    return lines + [""]


def render_report(
    metrics_dir: Path, plots_dir: Path, out_dir: Path, kinds: dict[str, str], *, train_dir: Path | None = None,
    teacher_plots: Path | None = None, title: str = "Distillation report",
) -> str:  # fmt: skip
    """Write report.md and its charts to `out_dir`; returns the markdown. `kinds` maps a model name to its role.
    Accuracy, F1, retention and training time are mean ± sample std over a student's seed runs when it has several.
    The students' training records and histories are in `train_dir` (default: `metrics_dir`) and `plots_dir`, the
    teacher's beside its scores and in `teacher_plots` (default: `plots_dir`): a multi-task student's other tasks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # only the models params name: a metrics file left by a student since removed from params is not reported
    loaded = load_metrics(metrics_dir, train_dir)
    models = {n: m for n, m in loaded.items() if not kinds or n in kinds or n == "teacher"}
    if "teacher" not in models:
        raise FileNotFoundError(f"{metrics_dir}/teacher.json: no teacher metrics; run evaluate_teacher first")
    teacher = models["teacher"]
    k = headline(teacher)
    label, _, other_label = columns(teacher)
    split = choice_split(teacher)
    tuned = split == TUNE  # choices are made on the tuning split; dev is the record
    choice = f"{TUNE} {label.removeprefix('dev ')}" if tuned else label
    order = ["teacher"] + sorted((n for n in models if n != "teacher"), key=lambda n: -mean_score(models[n]))
    students = [n for n in order if not kinds.get(n, "teacher" if n.startswith("teacher") else "").startswith("teacher")]
    best = most_accurate(models, students)
    singles = [n for n in students if kinds.get(n) != "ensemble"]
    shipped = deployments(models, ["teacher", *singles])  # every model in every runtime it was measured in
    fastest, tied = fastest_near_teacher(shipped, [n for n in shipped if not n.startswith("teacher ·")], teacher)
    choice_key = key(k, split)
    t_choice = mean_score(teacher)
    advice = [
        f"- Most accurate: **{best}** ({choice} {_pm(models[best], choice_key)}, "
        f"{_fmt(_pct(mean_score(models[best]), t_choice), '.1f', '%')} of the teacher; dev for the record: {_pm(models[best], k)})."
        if best
        else "- No students yet."
    ]
    name, runtime = fastest.split(" · ") if fastest else (None, None)
    advice.append(
        f"- Fastest within 1 point of the teacher: **{name}** {RUNTIME_WORDS.get(runtime)} "
        f"({_fmt(speedup(shipped[fastest], teacher), '.2f', '×')} faster than the PyTorch teacher at batch 32"
        f"{_fmt(speedup(shipped[fastest], teacher, 1), '.2f', '× at batch 1').join([', ', ''] if speedup(shipped[fastest], teacher, 1) else ['', ''])}"
        f"{'; speedups within 5% count as one, the more accurate first' if tied > 1 else ''})."
        if fastest
        else "- No single student is within 1 point of the teacher in any runtime."
    )
    for base in (n for n in students if kinds.get(n, "").startswith("baseline")):
        rivals = [n for n in students if n != base and kinds.get(n) == "student" and same_shape(models[n], models[base])]
        if rivals:
            advice += _kd_lines(models, most_accurate(models, rivals), base, split, choice)
    teachers = [n for n in order if n != "teacher" and n not in students]
    if teachers:
        advice.append(
            "- Teachers alone: teacher "
            + f"{_pm(teacher, choice_key)}; "
            + "; ".join(f"{n} {_pm(models[n], choice_key)} ({100 * (mean_score(models[n]) - t_choice):+.2f})" for n in teachers)
            + f" ({choice}; the teacher ensemble averages their logits)."
        )
    advice += _multitask_lines(models, kinds, choice)
    histories = {n: Path(plots_dir) / f"{n}.csv" for n in order}
    histories["teacher"] = Path(teacher_plots or plots_dir) / "teacher.csv"
    write_charts(models, order, shipped, histories, out_dir, label, choice)
    metric = (
        [f"Quality metric: {teacher['metric']} on the cached dev rows (the '{label}' column).", ""] if "metric" in teacher else []
    )
    md = "\n".join(
        [
            f"# {title}",
            "",
            *metric,
            (
                f"Which student to ship — chosen on the tuning split `{TUNE}` ({teacher.get(key('rows', TUNE), '?')} rows "
                "read from data.val, or carved from train: whole sentences for text tasks); dev is scored once, for the record:"
                if tuned
                else "Which student to ship (no tuning split: data.val_examples is 0, so these choices are made on dev "
                "and dev figures are optimistic):"
            ),
            *advice,
            "",
            *_table(models, order, kinds, tuned, label, other_label, choice),
            "",
            *_per_seed(models, order, tuned, label, choice),
            *_deployed_table(shipped, teacher, tuned, label, choice),
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
