"""extract (stage one): run the teacher once over train, dev and any transfer texts; write logits + hidden states to the cache."""

import dataclasses
from pathlib import Path

from pipeline.cli import run_stage
from pipeline.data import load_prepared
from pipeline.distributed import relaunch_under_torchrun
from pipeline.errors import PipelineError
from pipeline.extract import extract_cache, write_extract_report


def main(params, args):
    if (code := relaunch_under_torchrun(params.extract.nproc, key="extract.nproc")) is not None:
        raise SystemExit(code)  # the torchrun processes did the work (and printed any error)
    splits, info = load_prepared(Path(args.prepared))
    if Path(args.transfer).exists():  # the unlabeled transfer split, when data.transfer names one
        transfer, transfer_info = load_prepared(Path(args.transfer))
        splits.update(transfer)
        info["splits"].update(transfer_info["splits"])
    if info["max_length"] != params.data.max_length:
        raise PipelineError(
            f"{args.prepared}: prepared with max_length {info['max_length']} but data.max_length is "
            f"{params.data.max_length}; rerun prepare (`dvc repro`)"
        )
    cfg, record = params.extract, None
    if args.name != "teacher":  # an extra teacher: its logits only (the main cache gives the hidden states)
        cfg = dataclasses.replace(cfg, layers=[], attentions=[], values=[])
        record = params.teacher_record(args.name)  # distill checks the cache against it
    result = extract_cache(
        Path(args.teacher),
        splits,
        Path(args.out),
        cfg,
        info=info,
        mask_seed=params.seed,
        record=record,
        task_config=params.task_config,
    )
    if result is None:
        return  # a torchrun rank other than 0: rank 0 wrote the manifest and reports
    write_extract_report(Path(args.metrics), result)
    m = result["manifest"]
    print(f"extract: {m['bytes'] / 1e6:.1f} MB in {sum(len(s['shards']) for s in m['splits'].values())} shards -> {args.out}")


def configure(p):
    p.add_argument("--name", default="teacher", help="teacher, or an extra teacher's name under `teachers` (logits only)")
    p.add_argument("--prepared", required=True, help="prepare's train, dev and val splits")
    p.add_argument("--transfer", required=True, help="prepare's transfer split (read when it exists)")
    p.add_argument("--teacher", required=True, help="the fine-tuned teacher's dir")
    p.add_argument("--out", required=True, help="the cache dir")
    p.add_argument("--metrics", required=True, help="the extraction report (JSON)")


if __name__ == "__main__":
    run_stage(main, configure)
