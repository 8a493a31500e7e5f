"""distill_multitask-<student> (stage two, several tasks): train one student encoder with a head per task from the
caches its `tasks` name (no teacher in memory), once per seed; save a checkpoint per task under <out-root>/<student>/."""

from pathlib import Path

from pipeline.cli import run_stage
from pipeline.distributed import ranks, relaunch_under_torchrun
from pipeline.errors import PipelineError
from pipeline.multitask import distill_multitask_seeds
from pipeline.multitask_params import task_sources
from pipeline.trainer import write_training_record


def main(params, args):
    if args.student not in params.multitask.students:
        known = ", ".join(params.multitask.students) or "none"
        raise PipelineError(f"params.yaml: no student named '{args.student}' under 'multitask.students' (have: {known})")
    cfg, _ = params.distill_for(args.student)
    sources = task_sources(
        params,
        args.student,
        cache=Path(args.cache),
        teacher=Path(args.teacher),
        tasks_root=args.tasks_root and Path(args.tasks_root),
    )
    key = f"multitask.students.{args.student}.nproc (or distill.nproc)"
    if (code := relaunch_under_torchrun(cfg.nproc, key=key)) is not None:
        raise SystemExit(code)  # DDP processes trained the student (and printed any error)
    mt = params.multitask
    spec = mt.students[args.student]
    result = distill_multitask_seeds(
        sources, Path(args.out_root) / args.student, spec, cfg, mt.sampling, mt.temperature, seeds=params.seeds_for(args.student)
    )
    if not ranks().main:
        return  # rank 0 writes the history and the summary
    write_training_record(result, args.student, Path(args.plots_root), Path(args.metrics_root))
    print(f"distill_multitask {args.student}: {result['summary']}")


def configure(p):
    p.add_argument("--student", required=True, help="a name under `multitask.students` in params.yaml")
    p.add_argument("--cache", required=True, help="this params file's own cache (task `main`)")
    p.add_argument("--teacher", required=True, help="its teacher (read only for init 'teacher', when main comes first)")
    p.add_argument("--tasks-root", help="the other tasks' dirs, one per name, each with its cache/ and teacher/")
    p.add_argument("--out-root", required=True, help="students' dirs, one per name (a folder per task inside)")
    p.add_argument("--metrics-root", required=True, help="where train_<student>.json goes")
    p.add_argument("--plots-root", required=True, help="where <student>.csv goes")


if __name__ == "__main__":
    run_stage(main, configure)
