"""P6, students as deployed: int8's cost in dev accuracy, and the speedup of the fastest shipped model that keeps 97%
of the teacher's dev accuracy, over the PyTorch teacher at batch 1 and 32.

Reads the scores `dvc repro` wrote (`artifacts/metrics`: every model in PyTorch, ONNX fp32 and ONNX int8, timed
interleaved by `evaluate`). The int8 cost is over every seed run of the student: the export stage ships the first
seed's checkpoint; the other seeds' checkpoints are exported here the same way and scored on the same dev rows.

    python bench/p6_deployed.py [--student l3]
"""

from __future__ import annotations

import argparse
import json
import statistics

from pipeline.config import ExportConfig
from pipeline.evaluation import evaluate_saved_model
from pipeline.exporting import export_model
from pipeline.models import seed_model_dirs

from common import ROOT, WORK, save

METRICS = ROOT / "artifacts" / "metrics"
RUNTIMES = ("pytorch", "onnx", "onnx_int8")


def _at(scores: dict, runtime: str, key: str):
    return scores.get(key if runtime == "pytorch" else f"{runtime}.{key}")


def int8_cost(student: str) -> dict:
    """PyTorch dev accuracy minus ONNX int8's, per seed run of `student` (points)."""
    per_seed = {}
    for seed, model_dir in seed_model_dirs(ROOT / "artifacts" / "students" / student):
        export = WORK / "p6" / f"{student}-{seed}"
        export_model(model_dir, export, ExportConfig())
        s = evaluate_saved_model(
            model_dir, ROOT / "artifacts/cache", batch_size=64, latency_batch_sizes=[], latency_repeats=0, export_dir=export
        )
        per_seed[str(seed)] = {"pytorch": s["accuracy"], "onnx_int8": s["onnx_int8.accuracy"], "onnx": s["onnx.accuracy"]}
    costs = [100 * (r["pytorch"] - r["onnx_int8"]) for r in per_seed.values()]
    return {"per_seed": per_seed, "mean_cost_points": round(statistics.mean(costs), 3), "seeds": len(costs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="l3", help="the student whose int8 cost is measured over its seeds")
    args = ap.parse_args()
    models = {p.stem: json.loads(p.read_text()) for p in sorted(METRICS.glob("*.json")) if "headline" in p.read_text()[:200]}
    teacher = models["teacher"]
    rows, best = [], {}
    for name, scores in models.items():
        if "members" in scores:
            continue  # ensembles are not exported
        for runtime in RUNTIMES:
            acc = _at(scores, runtime, "accuracy")
            if acc is None:
                continue
            speed = {
                b: (1.0 if name == "teacher" and runtime == "pytorch" else _at(scores, runtime, f"speedup_b{b}")) for b in (1, 32)
            }
            rows.append(
                {"model": name, "runtime": runtime, "dev_accuracy": acc, "speedup_b1": speed[1], "speedup_b32": speed[32]}
            )
            if acc >= 0.97 * teacher["accuracy"]:
                for b in (1, 32):
                    if speed[b] and speed[b] > best.get(b, {}).get("speedup", 0):
                        best[b] = {"model": name, "runtime": runtime, "speedup": speed[b], "dev_accuracy": acc}
    for r in rows:
        print(
            f"{r['model']:>8} {r['runtime']:>9}  dev {100 * r['dev_accuracy']:.2f}  b1 {r['speedup_b1'] or 0:.2f}x  b32 {r['speedup_b32'] or 0:.2f}x"
        )
    cost = int8_cost(args.student)
    print(f"int8 cost of {args.student}: {cost['mean_cost_points']:+.2f} points (mean of {cost['seeds']} seeds; goal <= 0.3)")
    for b in (1, 32):
        f = best.get(b)
        print(
            f"fastest at >= 97% of the teacher, batch {b}: {f['model']} {f['runtime']} {f['speedup']:.2f}x (goal >= 8)"
            if f
            else "none"
        )
    save(
        "p6_deployed",
        {
            "figure": "P6 deployed students: int8 cost (points) and the fastest model at >= 97% of the teacher's dev accuracy",
            "models": rows,
            "int8_cost": {args.student: cost},
            "fastest_at_97pct": {f"b{b}": f for b, f in best.items()},
        },
    )


if __name__ == "__main__":
    main()
