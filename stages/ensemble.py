"""ensemble-<name>: average the logits of named students (or, with --teachers, of the teachers); evaluated like a student
(accuracy, F1, params, latency)."""

import json
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.errors import PipelineError
from pipeline.evaluation import compare_to_teacher, evaluate_ensemble


def main(params, args):
    needed = ("teacher", "teachers_root") if args.teachers is not None else ("students_root",)
    if missing := [f"--{n.replace('_', '-')}" for n in needed if getattr(args, n) is None]:
        raise PipelineError(f"stages/ensemble.py: {' and '.join(missing)} missing; run `python -m pipeline.dvcgraph`")
    if args.teachers is not None:  # the teachers' ensemble: the main teacher and every extra one
        wanted = ["teacher", *params.teachers]
        if args.teachers != wanted:
            raise PipelineError(
                f"dvc.yaml: stage {args.name} was generated for teachers {args.teachers} but params.yaml has {wanted}; "
                "run `python -m pipeline.dvcgraph`, then `dvc repro`"
            )
        dirs = [Path(args.teacher) if t == "teacher" else Path(args.teachers_root) / t for t in wanted]
    else:
        members = params.ensembles[args.name].members if args.name in params.ensembles else None
        if members != args.members:  # dvc.yaml's stage (its deps) was made for other members than params.yaml names now
            raise PipelineError(
                f"dvc.yaml: stage ensemble-{args.name} was generated for members {args.members} but params.yaml says "
                f"{members}; run `python -m pipeline.dvcgraph` to regenerate the ensemble stages, then `dvc repro`"
            )
        dirs = [Path(args.students_root) / m for m in members]
    cfg = params.evaluate
    result = evaluate_ensemble(
        dirs,
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
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--members", nargs="+", help="the students dvc.yaml's stage depends on (checked against params)")
    group.add_argument("--teachers", nargs="+", help="teacher and the extra teachers' names (checked against params)")
    p.add_argument("--teacher", help="the main teacher's dir (with --teachers)")
    p.add_argument("--teachers-root", help="the extra teachers' dirs, one per name (with --teachers)")
    p.add_argument("--students-root", help="students' dirs, one per name (with --members)")
    p.add_argument("--cache", required=True, help="dev and val rows come from the cache")
    p.add_argument("--teacher-metrics", required=True, help="the teacher's evaluation, for retention")
    p.add_argument("--metrics-root", required=True, help="where <name>.json goes")


if __name__ == "__main__":
    run_stage(main, configure)
