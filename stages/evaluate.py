"""evaluate: dev accuracy, macro-F1, size and CPU latency of the teacher or a student (every seed run: mean +- std)
and of its ONNX fp32 and int8 exports; retention vs the teacher, speedup vs a teacher-shaped model timed interleaved
in the same process; for a multi-task student, all its tasks served from one encoder pass against separately."""

import json
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.errors import PipelineError
from pipeline.evaluation import compare_to_teacher, evaluate_saved_model
from pipeline.multitask_serving import one_encoder_scores


def main(params, args):
    cfg = params.evaluate
    result = evaluate_saved_model(
        Path(args.model),
        Path(args.cache),
        batch_size=cfg.batch_size,
        latency_batch_sizes=cfg.latency_batch_sizes,
        latency_repeats=cfg.latency_repeats,
        against_teacher_shape=bool(args.teacher_metrics),
        export_dir=Path(args.export) if args.export else None,
    )
    if args.teacher_metrics:
        path = Path(args.teacher_metrics)
        if not path.is_file():
            raise PipelineError(f"{path}: teacher metrics not found; run `dvc repro evaluate_teacher` first")
        result.update(compare_to_teacher(result, json.loads(path.read_text())))
    if args.one_encoder:
        model = Path(args.model)
        result["one_encoder"] = one_encoder_scores(
            model.parent, args.one_encoder.split(","), Path(args.cache), cfg.latency_batch_sizes, cfg.latency_repeats
        )
    out = Path(args.metrics_root) / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"evaluate {args.name}: {result}")


def configure(p):
    p.add_argument("--model", required=True, help="a saved classifier dir")
    p.add_argument("--name", required=True, help="teacher or a student name; names the metrics file")
    p.add_argument("--cache", required=True, help="dev and val rows come from the cache")
    p.add_argument(
        "--teacher-metrics",
        default=None,
        help="teacher metrics JSON for retention; also times the model against a teacher-shaped one for speedups",
    )
    p.add_argument("--metrics-root", required=True, help="where <name>.json goes")
    p.add_argument("--export", default=None, help="the model's export dir: its ONNX fp32 and int8 models are scored too")
    p.add_argument(
        "--one-encoder",
        default=None,
        help="TASK,TASK,...: --model is one task of a multi-task student; also time all these tasks from one encoder",
    )


if __name__ == "__main__":
    run_stage(main, configure)
