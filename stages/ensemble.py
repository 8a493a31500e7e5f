"""ensemble-<name>: average the logits of named students; evaluated like a student (accuracy, F1, params, latency)."""

import json
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.errors import PipelineError
from pipeline.metrics import compare_to_teacher, evaluate_ensemble


def main(params, args):
    members = params.ensembles[args.name].members if args.name in params.ensembles else None
    if members != args.members:  # dvc.yaml's stage (its deps) was made for other members than params.yaml names now
        raise PipelineError(
            f"dvc.yaml: stage ensemble-{args.name} was generated for members {args.members} but params.yaml says "
            f"{members}; run `python -m pipeline.dvcgraph` to regenerate the ensemble stages, then `dvc repro`"
        )
    cfg = params.evaluate
    result = evaluate_ensemble(
        [Path(args.students_root) / m for m in members],
        Path(args.cache),
        batch_size=cfg.batch_size,
        latency_batch_sizes=cfg.latency_batch_sizes,
        latency_repeats=cfg.latency_repeats,
        against_teacher_shape=True,
    )
    result.update(compare_to_teacher(result, json.loads(Path(args.teacher_metrics).read_text())))
    out = Path(args.metrics_root) / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ensemble {args.name}: {result}")


def configure(p):
    p.add_argument("--name", required=True, help="a name under `ensembles` in params.yaml")
    p.add_argument("--members", nargs="+", required=True, help="the members dvc.yaml's stage depends on (checked against params)")
    p.add_argument("--students-root", default="artifacts/students")
    p.add_argument("--cache", default="artifacts/cache")
    p.add_argument("--teacher-metrics", default="artifacts/metrics/teacher.json")
    p.add_argument("--metrics-root", default="artifacts/metrics")


if __name__ == "__main__":
    run_stage(main, configure)
