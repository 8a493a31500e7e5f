"""report: one table (teacher, students, baselines, ensembles) and charts from the metrics -> artifacts/report/."""

from pathlib import Path

from pipeline.cli import run_stage
from pipeline.report import render_report
from pipeline.specs import MAIN


def main(params, args):
    extra = [f"teacher-{t}" for t in params.teachers] + (["teacher-ensemble"] if params.teachers else [])
    multitask = [s for s, spec in params.multitask.students.items() if MAIN in spec.tasks]  # scored on this file's task
    names = ["teacher", *extra, *params.students, *multitask, *params.ensembles]
    md = render_report(Path(args.metrics), Path(args.plots), Path(args.out), {n: params.role(n) for n in names})
    print(md.split("\n\n")[1])


def configure(p):
    p.add_argument("--metrics", required=True, help="the metrics dir the evaluate stages write")
    p.add_argument("--plots", required=True, help="the loss histories")
    p.add_argument("--out", required=True, help="the report dir")


if __name__ == "__main__":
    run_stage(main, configure)
