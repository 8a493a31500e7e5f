"""export: a saved model (the teacher or a student) as it ships: ONNX fp32, ONNX int8 and its tokenizer."""

from pathlib import Path

from pipeline.cli import run_stage
from pipeline.exporting import export_model


def main(params, args):
    summary = export_model(Path(args.model), Path(args.out), params.export)
    sizes = ", ".join(f"{r} {mb:.1f} MB" for r, mb in summary["size_mb"].items())
    print(f"export {args.model} -> {args.out}: {sizes}; largest difference from PyTorch {summary['onnx_max_abs_diff']:.2g}")


def configure(p):
    p.add_argument("--model", required=True, help="a saved model dir (a student or the teacher)")
    p.add_argument("--out", required=True, help="the export dir: model.onnx, model.int8.onnx, tokenizer, export.json")


if __name__ == "__main__":
    run_stage(main, configure)
