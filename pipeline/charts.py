"""The report's charts: small dependency-free SVGs (one point per model, or a curve per model), and the per-model
table DVC draws its own scatter plots from (dvc.yaml's top-level `plots`)."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.scores import mean_score

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


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


def curve(csv_path: Path, key: str) -> list[tuple[float, float]]:
    """(step, value) of a training-history column (`pipeline.trainer.write_history_csv`)."""
    if not csv_path.is_file():
        return []
    with open(csv_path) as f:
        return [(float(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key) not in (None, "")]


MODELS_CSV = "models.csv"  # one row per model: what dvc.yaml's scatter plots draw


def write_charts(
    models: dict[str, dict], order: list[str], shipped: dict[str, dict], histories: dict[str, Path], out_dir: Path, label: str,
    choice: str,
) -> None:  # fmt: skip
    """The report's four SVG charts and models.csv (the headline metric on the choice split, in %, against parameters
    and batch-32 latency): a row per model (ensembles included) and, for models exported, one per runtime
    (`shipped`: '<name> · <runtime>' -> scores); learning curves from each model's training history (`histories`)."""
    rows = {n: models[n] for n in order}
    rows.update({n: m for n, m in shipped.items() if "runtime" in m})
    with open(out_dir / MODELS_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "runtime", "params_m", "latency_ms_b32", "metric"])
        for n, m in rows.items():
            runtime = m.get("runtime", "pytorch")
            metric = round(100 * mean_score(m), 4)
            writer.writerow([n, runtime, round(m["params"] / 1e6, 3), m.get("latency_ms_b32", ""), metric])
    svg_chart(
        {n: [(models[n]["params"] / 1e6, 100 * mean_score(models[n]))] for n in order},
        out_dir / "accuracy_vs_params.svg",
        x_label="parameters (M)",
        y_label=f"{label} (%)",
        title=f"{label} against size",
        lines=False,
    )
    svg_chart(
        {n: [(m["latency_ms_b32"], 100 * mean_score(m))] for n, m in rows.items() if m.get("latency_ms_b32")},
        out_dir / "accuracy_vs_latency.svg",
        x_label="CPU latency, batch 32 (ms)",
        y_label=f"{label} (%)",
        title=f"{label} against latency",
        lines=False,
    )
    svg_chart(
        {n: curve(histories[n], "loss") for n in order},
        out_dir / "training_loss.svg",
        x_label="step",
        y_label="training loss",
        title="Learning curves",
    )
    key = models["teacher"]["headline"]
    svg_chart(
        {n: curve(histories[n], f"eval_{key}") for n in order},
        out_dir / "dev_accuracy.svg",
        x_label="step",
        y_label=choice,
        title=f"{choice} at each epoch end",
    )
