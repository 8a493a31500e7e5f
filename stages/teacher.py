"""teacher: fine-tune teacher.model with Trainer for sequence classification, or with task masked_lm on the corpus
texts as a masked LM (or take it as is when teacher.epochs is 0)."""

import json
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.data import load_prepared
from pipeline.teacher import run_teacher
from pipeline.trainer import write_history_csv


def main(params, args):
    splits, info = load_prepared(Path(args.prepared))
    out = Path(args.out)
    cfg, seed = params.teacher_for(args.name)  # `teacher`, or an extra teacher under `teachers`
    history, summary = run_teacher(cfg, splits, info, seed, out)
    write_history_csv(history, Path(args.plots))
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"teacher: saved to {out}; {summary}")


def configure(p):
    p.add_argument("--name", default="teacher", help="teacher, or an extra teacher's name under `teachers`")
    p.add_argument("--prepared", required=True, help="prepare's output")
    p.add_argument("--out", required=True, help="the fine-tuned teacher's dir")
    p.add_argument("--metrics", required=True, help="the training summary (JSON)")
    p.add_argument("--plots", required=True, help="the loss history (CSV)")


if __name__ == "__main__":
    run_stage(main, configure)
