"""The comparison report: one table (teacher, students, baselines, ensembles) and charts, from the metrics files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def svg_chart(series: dict[str, list[tuple[float, float]]], path: Path, *, x_label: str, y_label: str, title: str,
              lines: bool = True, width: int = 560, height: int = 340) -> None:
    """A small dependency-free SVG chart: one polyline (or points) per series, labelled axes, a legend."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="10" y="25">{title}: '
                        'no data</text></svg>\n')
        return
    left, right, top, bottom = 60, 150, 30, 45
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 0.5, y1 + 0.5) if y0 == y1 else (y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0))
    sx = lambda x: left + (width - left - right) * (x - x0) / (x1 - x0)  # noqa: E731
    sy = lambda y: height - bottom - (height - top - bottom) * (y - y0) / (y1 - y0)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13">{title}</text>',
           f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#444"/>',
           f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle">{x_label}</text>',
           f'<text x="14" y="{(top + height - bottom) / 2}" transform="rotate(-90 14 {(top + height - bottom) / 2})" '
           f'text-anchor="middle">{y_label}</text>']
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{height - bottom + 14}" text-anchor="middle">{xv:.3g}</text>')
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    for k, (name, s) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        coords = [(sx(x), sy(y)) for x, y in s]
        if lines and len(coords) > 1:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" '
                       f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>')
        out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.5 if lines else 4}" fill="{color}"/>' for x, y in coords]
        out.append(f'<text x="{width - right + 10}" y="{top + 14 * (k + 1)}" fill="{color}">{name}</text>')
    path.write_text("\n".join(out + ["</svg>"]) + "\n")


def load_metrics(metrics_dir: Path) -> dict[str, dict]:
    """name -> evaluation metrics (+ 'train' with the distill summary when there is one)."""
    models = {}
    for path in sorted(Path(metrics_dir).glob("*.json")):
        if path.stem.startswith("train_") or path.stem in ("extract", "teacher_train"):
            continue
        models[path.stem] = json.loads(path.read_text())
        train = Path(metrics_dir) / ("teacher_train.json" if path.stem == "teacher" else f"train_{path.stem}.json")
        if train.is_file():
            models[path.stem]["train"] = json.loads(train.read_text())
    return models


def _fmt(value, spec: str, unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def _curve(csv_path: Path, key: str) -> list[tuple[float, float]]:
    if not csv_path.is_file():
        return []
    with open(csv_path) as f:
        return [(float(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key) not in (None, "")]


def render_report(metrics_dir: Path, plots_dir: Path, out_dir: Path, kinds: dict[str, str]) -> str:
    """Write report.md and its charts to `out_dir`; returns the markdown. `kinds` maps a model name to its role."""
    out_dir.mkdir(parents=True, exist_ok=True)
    models = load_metrics(metrics_dir)
    if "teacher" not in models:
        raise FileNotFoundError(f"{metrics_dir}/teacher.json: no teacher metrics; run evaluate_teacher first")
    teacher = models["teacher"]
    order = ["teacher"] + sorted((n for n in models if n != "teacher"), key=lambda n: -models[n]["accuracy"])
    head = ("| model | role | layers×hidden | params | size | dev acc | macro-F1 | retention | latency b1 / b32 (ms) "
            "| speedup b32 | train time | peak RSS |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for n in order:
        m = models[n]
        train = m.get("train", {})
        shape = f"{m.get('layers', '?')}×{m.get('hidden_size', '?')}" if "members" not in m else "+".join(m["members"])
        ret = "—" if n == "teacher" else f"{100 * m['accuracy'] / teacher['accuracy']:.1f}%"
        speed = "1.00×" if n == "teacher" else (f"{teacher['latency_ms_b32'] / m['latency_ms_b32']:.2f}×"
                                                 if m.get("latency_ms_b32") and teacher.get("latency_ms_b32") else "—")
        lat = f"{_fmt(m.get('latency_ms_b1'), '.2f')} / {_fmt(m.get('latency_ms_b32'), '.1f')}"
        rows.append(f"| {n} | {kinds.get(n, 'teacher' if n == 'teacher' else 'student')} | {shape} | {m['params'] / 1e6:.1f} M "
                    f"| {m['size_mb']:.1f} MB | {100 * m['accuracy']:.2f} | {100 * m['f1']:.2f} | {ret} | {lat} | {speed} "
                    f"| {_fmt(train.get('seconds'), '.0f', ' s')} | {_fmt(train.get('peak_rss_mb'), '.0f', ' MB')} |")
    students = [n for n in order if n != "teacher"]
    near = [n for n in students if models[n]["accuracy"] >= teacher["accuracy"] - 0.01 and kinds.get(n) != "ensemble"]
    fastest = min(near, key=lambda n: models[n].get("latency_ms_b32", float("inf"))) if near else None
    best = max(students, key=lambda n: models[n]["accuracy"]) if students else None
    advice = [f"- Most accurate: **{best}** ({100 * models[best]['accuracy']:.2f}, "
              f"{100 * models[best]['accuracy'] / teacher['accuracy']:.1f}% of the teacher)." if best else "- No students yet."]
    advice.append(f"- Fastest within 1 point of the teacher: **{fastest}** "
                  f"({teacher['latency_ms_b32'] / models[fastest]['latency_ms_b32']:.2f}× faster at batch 32)." if fastest
                  else "- No single student is within 1 point of the teacher.")
    svg_chart({n: [(models[n]["params"] / 1e6, 100 * models[n]["accuracy"])] for n in order}, out_dir / "accuracy_vs_params.svg",
              x_label="parameters (M)", y_label="dev accuracy (%)", title="Accuracy against size", lines=False)
    svg_chart({n: [(models[n]["latency_ms_b32"], 100 * models[n]["accuracy"])] for n in order if models[n].get("latency_ms_b32")},
              out_dir / "accuracy_vs_latency.svg", x_label="CPU latency, batch 32 (ms)", y_label="dev accuracy (%)",
              title="Accuracy against latency", lines=False)
    svg_chart({n: _curve(Path(plots_dir) / f"{n}.csv", "loss") for n in order}, out_dir / "training_loss.svg",
              x_label="step", y_label="training loss", title="Learning curves")
    svg_chart({n: _curve(Path(plots_dir) / f"{n}.csv", "eval_accuracy") for n in order}, out_dir / "dev_accuracy.svg",
              x_label="step", y_label="dev accuracy", title="Dev accuracy at each epoch end")
    md = "\n".join(["# Distillation report", "", "Which student to ship:", *advice, "", *rows, "",
                    "Retention = student ÷ teacher dev accuracy; speedup = teacher ÷ model CPU latency at batch 32; train "
                    "time and peak RSS are those of the model's own training stage (the teacher's is its fine-tuning).",
                    "", "![accuracy vs params](accuracy_vs_params.svg) ![accuracy vs latency](accuracy_vs_latency.svg)", "",
                    "![training loss](training_loss.svg) ![dev accuracy](dev_accuracy.svg)", ""])
    (out_dir / "report.md").write_text(md)
    return md
