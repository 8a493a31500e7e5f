"""P1: extract-stage wall time / bare teacher forward over the same batches on the same device (goal <= 1.05),
and padding before/after length sorting.

    python bench/p1_extract_overhead.py [--rows 4000] [--device cpu|cuda]

The bare pass runs the same length-sorted, padded batches through the same model with output_hidden_states and
nothing else: no masking, copies, conversion, Arrow, hashing or writing.
"""

import argparse
import shutil

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from common import WORK, Timer, fingerprints, prepared, save, teacher_dir

from pipeline.extract import extract_cache, length_sorted_batches, resolve_device


def padded_batches(splits, batch_size, pad_id=0, sort=True):
    for ds in splits.values():
        lengths = np.asarray(ds["length"])
        ids = ds["input_ids"]
        order = length_sorted_batches(lengths, batch_size) if sort else [
            np.arange(i, min(i + batch_size, len(lengths))) for i in range(0, len(lengths), batch_size)]
        for rows in order:
            width = int(lengths[rows].max())
            x = np.full((len(rows), width), pad_id, dtype=np.int64)
            for j, r in enumerate(rows):
                x[j, :lengths[r]] = ids[r]
            yield torch.from_numpy(x), (torch.arange(width)[None] < torch.from_numpy(lengths[rows])[:, None]).long()


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
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    device = resolve_device(args.device)
    teacher = teacher_dir()
    splits, info = prepared(args.rows, None)
    model = AutoModelForSequenceClassification.from_pretrained(teacher, use_safetensors=True).to(device).eval()
    batches = list(padded_batches(splits, args.batch_size))
    for x, m in batches[:3]:  # warm-up
        with torch.no_grad():
            model(input_ids=x.to(device), attention_mask=m.to(device), output_hidden_states=True)
    with Timer() as bare, torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for x, m in batches:
            model(input_ids=x.to(device, non_blocking=True), attention_mask=m.to(device, non_blocking=True),
                  output_hidden_states=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
    out_dir = WORK / "p1_cache"
    shutil.rmtree(out_dir, ignore_errors=True)
    with Timer() as full:
        result = extract_cache(teacher, splits, out_dir, layers=layers, dtype="float16", batch_size=args.batch_size,
                               shard_max_bytes=256 << 20, device=str(device), max_length=64,
                               label_names=info["label_names"], dataset_fingerprints=fingerprints(info))
    loop = sum(s["seconds"] for s in result["stats"].values())
    rows = sum(len(ds) for ds in splits.values())
    save(f"p1_extract_overhead_{device.type}", {
        "figure": "P1 extraction overhead: extract wall / bare teacher forward", "goal": "<= 1.05",
        "ratio_loop": round(loop / bare.seconds, 3), "ratio_whole_call": round(full.seconds / bare.seconds, 3),
        "bare_forward_s": round(bare.seconds, 2), "extract_loop_s": round(loop, 2), "extract_call_s": round(full.seconds, 2),
        "rows": rows, "layers": layers, "device": str(device), "examples_per_s": round(rows / loop, 1),
        "padding_fraction_unsorted": round(padding_fraction(splits, args.batch_size, sort=False), 4),
        "padding_fraction_sorted": round(padding_fraction(splits, args.batch_size, sort=True), 4),
    })


if __name__ == "__main__":
    main()
