"""report: one table (teacher, students, baselines, ensembles) and charts from the metrics -> artifacts/report/; with
--task, the report of another task of the multi-task students (its teacher and every student scored on it)."""

from pathlib import Path

from pipeline.cli import run_stage
from pipeline.report import MULTITASK, render_report
from pipeline.specs import MAIN


def main(params, args):
    multitask = {s: spec.tasks for s, spec in params.multitask.students.items() if args.task in spec.tasks}
    if args.task == MAIN:
        extra = [f"teacher-{t}" for t in params.teachers] + (["teacher-ensemble"] if params.teachers else [])
        names = ["teacher", *extra, *params.students, *multitask, *params.ensembles]
    else:
        names = ["teacher", *multitask]
    kinds = {n: params.role(n) for n in names}
    kinds.update({s: f"{MULTITASK} ({'+'.join(tasks)})" for s, tasks in multitask.items() if len(tasks) > 1})
    md = render_report(
        Path(args.metrics),
        Path(args.plots),
        Path(args.out),
        kinds,
        train_dir=Path(args.train_metrics) if args.train_metrics else None,
        teacher_plots=Path(args.teacher_plots) if args.teacher_plots else None,
        title="Distillation report" if args.task == MAIN else f"Distillation report: task {args.task}",
    )
    print(md.split("\n\n")[1])


def configure(p):
    p.add_argument("--metrics", required=True, help="the metrics dir the evaluate stages write")
    p.add_argument("--plots", required=True, help="the loss histories")
    p.add_argument("--out", required=True, help="the report dir")
    p.add_argument("--task", default=MAIN, help="a task of multitask.tasks: report the models scored on it")
    p.add_argument("--train-metrics", default=None, help="where the students' train_<name>.json are (default --metrics)")
    p.add_argument("--teacher-plots", default=None, help="where the teacher's loss history is (default --plots)")


if __name__ == "__main__":
    run_stage(main, configure)
