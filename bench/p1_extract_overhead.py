"""P1: extract-stage wall time / bare teacher forward over the same batches on the same device (goal <= 1.05),
and padding before/after length sorting.

    python bench/p1_extract_overhead.py [--rows 4000] [--device cpu|cuda] [--teacher default|minilm|bert-base]

--teacher default is the fine-tuned teacher of the default run (or MiniLM); minilm / bert-base are random-weight
classifiers of those shapes with the tokenizer from --tokenizer (for the GPU machine, which has neither hub nor package).
--rows 0 = every SST-2 train row (67,349) plus dev.

The bare pass runs the same length-sorted, padded batches through the same model with output_hidden_states and
nothing else: no masking, copies, conversion, Arrow, hashing or writing; it runs once untimed first, so every batch
shape is warm. ratio_loop = extraction from its first batch until the last shard is hashed and the manifest written,
over the bare pass; ratio_loop_no_writer = the same teacher loop with a sink that drops every batch (host-side
cost of the loop itself, no writer thread competing for the CPU and the GIL); ratio_whole_call also counts loading the model and tokenizer. `writer` says where time went:
the writer thread's busy seconds and the seconds the teacher loop waited on its full queue (writer-bound when large).

P1-io (issue 12's form of the target, <= 1.1): ratio_loop over max(bare forward, cache bytes / the disk's sequential
write bandwidth), the bandwidth measured here, on the same filesystem, by writing 4 MiB blocks (at least 1 GiB, at
least the cache's size) and fsyncing: the slower of the two is what no extractor can beat.
"""

import argparse
import os
import shutil
import time

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from pipeline.config import ExtractConfig
from pipeline.extract import extract_cache, resolve_device
from pipeline.extract_loop import LoopPlan, extract_splits, length_sorted_batches

from common import WORK, Timer, prepared, random_teacher, save, teacher_dir


class DiscardSink:
    """Stands in for the writer thread: takes each batch and drops it (after its copies land), so a pass through the
    real teacher loop with it measures the loop's own host-side cost, with no writer competing for the CPU."""

    depth = 2
    wait_s = 0.0

    def __init__(self):
        self.pending = []

    def put(self, kind, split, batch, batch_end, ready=None):
        if ready is not None:
            self.pending.append(ready)
            if len(self.pending) > 2:
                self._drop(self.pending.pop(0))

    @staticmethod
    def _drop(ready):
        ready.synchronize()
        ready.release()  # the pinned slot goes back to the ring

    def close(self):
        for ready in self.pending:
            self._drop(ready)


def padded_batches(splits, batch_size, pad_id=0, sort=True):
    for ds in splits.values():
        lengths = np.asarray(ds["length"])
        ids = ds["input_ids"]
        order = (
            length_sorted_batches(lengths, batch_size)
            if sort
            else [np.arange(i, min(i + batch_size, len(lengths))) for i in range(0, len(lengths), batch_size)]
        )
        for rows in order:
            width = int(lengths[rows].max())
            x = np.full((len(rows), width), pad_id, dtype=np.int64)
            for j, r in enumerate(rows):
                x[j, : lengths[r]] = ids[r]
            yield torch.from_numpy(x), (torch.arange(width)[None] < torch.from_numpy(lengths[rows])[:, None]).long()


def disk_write_bandwidth(directory, nbytes: int) -> dict:
    """Sequential write bandwidth of `directory`'s filesystem: 4 MiB blocks, fsynced at the end (bytes/s), and the same
    without the fsync (the page cache's pace, which an extractor that does not fsync its shards also sees)."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(4 << 20)
    nbytes = max(nbytes, 1 << 30)
    path = directory / "bandwidth.tmp"
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(nbytes // len(block)):
            f.write(block)
        buffered = time.perf_counter() - started
        os.fsync(f.fileno())
    synced = time.perf_counter() - started
    path.unlink()
    return {"bytes": nbytes, "fsynced_bytes_per_s": nbytes / synced, "buffered_bytes_per_s": nbytes / buffered}


def padding_fraction(splits, batch_size, sort):
    real = sum(int(np.sum(ds["length"])) for ds in splits.values())
    padded = sum(x.numel() for x, _ in padded_batches(splits, batch_size, sort=sort))
    return 1 - real / padded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--layers", default="2,4,6")
    ap.add_argument("--teacher", default="default", choices=["default", "minilm", "bert-base"])
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir for a random teacher (default: the default teacher's)")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--name-batch", action="store_true", help="add _b<batch size> to the result's name")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    device = resolve_device(args.device)
    teacher = teacher_dir() if args.teacher == "default" else random_teacher(args.teacher, args.tokenizer or teacher_dir())
    splits, info = prepared(args.rows or None, None, tokenizer_dir=teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher, use_safetensors=True).to(device).eval()
    batches = list(padded_batches(splits, args.batch_size))
    if device.type == "cuda":  # the bare pass gets its inputs from pinned memory too
        batches = [(x.pin_memory(), m.pin_memory()) for x, m in batches]

    def bare_pass(batches):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for x, m in batches:
                model(
                    input_ids=x.to(device, non_blocking=True),
                    attention_mask=m.to(device, non_blocking=True),
                    output_hidden_states=True,
                )
            if device.type == "cuda":
                torch.cuda.synchronize()

    bare_pass(batches)  # warm-up over every batch shape (cuBLAS / SDPA pick kernels per shape on first sight)
    with Timer() as bare:
        bare_pass(batches)
    # the teacher loop alone: inputs padded, forward, outputs gathered/cast/copied to the host, nothing written
    layer_ids = sorted(set(layers))
    with Timer() as loop_only:
        sink = DiscardSink()
        extract_splits(model, splits, LoopPlan(layer_ids, dtype=args.dtype, batch_size=args.batch_size), sink)
        sink.close()
    out_dir = WORK / "p1_cache"
    shutil.rmtree(out_dir, ignore_errors=True)
    with Timer() as full:
        cfg = ExtractConfig(layers=layers, dtype=args.dtype, rank=None, batch_size=args.batch_size, device=str(device))
        result = extract_cache(teacher, splits, out_dir, cfg, info=info)
    loop = sum(s["seconds"] for s in result["stats"].values()) + result["writer"]["tail_s"]  # until the manifest is out
    rows = sum(len(ds) for ds in splits.values())
    disk = disk_write_bandwidth(WORK, result["manifest"]["bytes"])
    io_bound = max(bare.seconds, result["manifest"]["bytes"] / disk["fsynced_bytes_per_s"])
    name = (
        f"p1_extract_overhead_{device.type}"
        + ("" if args.teacher == "default" else f"_{args.teacher}")
        + ("" if args.dtype == "float16" else f"_{args.dtype}")
        + (f"_b{args.batch_size}" if args.name_batch else "")
    )
    save(
        name,
        {
            "figure": "P1 extraction overhead: extract wall / bare teacher forward",
            "goal": "<= 1.05",
            "ratio_loop": round(loop / bare.seconds, 3),
            "ratio_whole_call": round(full.seconds / bare.seconds, 3),
            "ratio_p1_io": round(loop / io_bound, 3),
            "p1_io_goal": "<= 1.1",
            "p1_io_bound_s": round(io_bound, 2),
            "disk_write_gb_per_s": round(disk["fsynced_bytes_per_s"] / 1e9, 3),
            "disk_write_buffered_gb_per_s": round(disk["buffered_bytes_per_s"] / 1e9, 3),
            "bare_forward_s": round(bare.seconds, 2),
            "ratio_loop_no_writer": round(loop_only.seconds / bare.seconds, 3),
            "loop_no_writer_s": round(loop_only.seconds, 2),
            "extract_loop_s": round(loop, 2),
            "extract_call_s": round(full.seconds, 2),
            "rows": rows,
            "layers": layers,
            "device": str(device),
            "examples_per_s": round(rows / loop, 1),
            "teacher": args.teacher,
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "tokens_per_s": round(sum(s["tokens"] for s in result["stats"].values()) / loop),
            "cache_bytes": result["manifest"]["bytes"],
            "writer": result["writer"],
            "padding_fraction_unsorted": round(padding_fraction(splits, args.batch_size, sort=False), 4),
            "padding_fraction_sorted": round(padding_fraction(splits, args.batch_size, sort=True), 4),
        },
    )


if __name__ == "__main__":
    main()
