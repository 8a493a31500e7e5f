"""distill@<student> (stage two): train one student from the cache alone (once per seed), save it with its tokenizer."""

from pathlib import Path

from pipeline.cli import run_stage
from pipeline.distill import distill_seeds
from pipeline.distributed import ranks, relaunch_under_torchrun
from pipeline.errors import PipelineError
from pipeline.trainer import write_training_record


def main(params, args):
    cfg, _ = params.distill_for(args.student)  # an unknown student: one line naming the known ones
    if cfg.teachers[1:] and args.caches_root is None:
        raise PipelineError("dvc.yaml: distill has no --caches-root for the extra teachers; run `python -m pipeline.dvcgraph`")
    if (code := relaunch_under_torchrun(cfg.nproc, key=f"students.{args.student}.nproc (or distill.nproc)")) is not None:
        raise SystemExit(code)  # DDP processes trained the student (and printed any error)
    result = distill_seeds(
        Path(args.cache),
        Path(args.out_root) / args.student,
        params.students[args.student],
        cfg,
        seeds=params.seeds_for(args.student),
        teacher_dir=Path(args.teacher),
        max_length=params.data.max_length,
        label_names=params.data.label_names,
        rank=params.extract.rank,
        task_config=params.task_config,
        extra_caches={t: (Path(args.caches_root) / t, params.teacher_record(t)) for t in cfg.teachers[1:]},
    )
    if not ranks().main:
        return  # rank 0 writes the history and the summary
    write_training_record(result, args.student, Path(args.plots_root), Path(args.metrics_root))
    print(f"distill {args.student}: {result['summary']}")


def configure(p):
    p.add_argument("--student", required=True, help="a name under `students` in params.yaml")
    p.add_argument("--cache", required=True, help="the main teacher's cache")
    p.add_argument(
        "--teacher",
        required=True,
        help="read only for init 'teacher' (chosen tensors, lazily; checked against the cache's teacher fingerprint)",
    )
    p.add_argument("--caches-root", help="the extra teachers' caches, one dir per name (when `teachers` names any)")
    p.add_argument("--out-root", required=True, help="students' dirs, one per name")
    p.add_argument("--metrics-root", required=True, help="where train_<student>.json goes")
    p.add_argument("--plots-root", required=True, help="where <student>.csv goes")


if __name__ == "__main__":
    run_stage(main, configure)
