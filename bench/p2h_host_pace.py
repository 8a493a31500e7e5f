"""P2h, the host-only pace of stage two: a student whose compute is negligible (1 layer, hidden 32, 1 head,
intermediate 32) trained through the product's stage two ÷ the same student in a plain loop over the same batches
collated in memory beforehand (goal >= 0.9 at each batch size, with row batches and with `batch_tokens`).

    python bench/p2h_host_pace.py [--rows 16000] [--batch-sizes 64,256,1024] [--timed-epochs 3]

What is left between the two is what stage two adds per step around the model (loop bookkeeping, sampling,
collation, copies, host syncs): on a GPU the same host work runs beside a student step of ~9-12 ms (l3 at batch
64-1,024 on an H100), so it must stay well below that. One torch thread; the two sides interleaved step by step
(`p2g_student_pace.paced`: a warm-up epoch, then the median ratio over the timed epochs); the cache holds the MiniLM teacher's logits and layer 6 (the 1-layer student's hidden-state pair). Token-budget runs
give stage two `distill.batch_tokens` = batch size x the rows' mean length (at most batch-size rows a batch) and the
plain loop the same sampler's batches. `host_us_per_row` = 1e6 x (1 / stage two's rows/s - 1 / the plain loop's).
"""

import argparse
import shutil

import numpy as np
import torch
from p2g_student_pace import paced

from pipeline.cache import TeacherCache, hidden_field
from pipeline.config import StudentSpec
from pipeline.extract import extract_cache

from common import WORK, fp16_extract, machine, prepared, save, teacher_dir

TINY = StudentSpec(num_layers=1, hidden_size=32, num_heads=1, intermediate_size=32, init="random")
LAYERS = (6,)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16000, help="SST-2 training rows cached and trained on")
    ap.add_argument("--batch-sizes", default="64,256,1024")
    ap.add_argument("--timed-epochs", type=int, default=3, help="epochs timed after the warm-up one, on each side")
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    teacher = teacher_dir()
    splits, info = prepared(args.rows, 100, tokenizer_dir=teacher)
    cache_dir = WORK / "p2h_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    extract_cache(teacher, splits, cache_dir, fp16_extract(layers=list(LAYERS), device="cpu"), info=info)
    cache = TeacherCache(cache_dir)
    columns = ["logits"] + [hidden_field(layer) for layer in LAYERS]
    train = cache.split("train", columns)
    mean_length = float(np.mean(train.lengths()))
    runs = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for tokens in (None, int(round(batch_size * mean_length))):
            torch.manual_seed(0)
            run = {"batch_size": batch_size, "batch_tokens": tokens}
            run.update(paced(cache, train, batch_size, device, 0, tokens, spec=TINY, timed=args.timed_epochs))
            run["host_us_per_row"] = round(1e6 * (1 / run["stage_two_rows_s"] - 1 / run["plain_rows_s"]), 1)
            runs.append(run)
            print(run, flush=True)
    save(
        "p2h_host_pace",
        {
            "figure": "P2h stage-two rows/s / plain loop on pre-collated batches, negligible-compute student",
            "goal": ">= 0.9 at every batch size, row batches and batch_tokens",
            "machine": machine(),
            "student": {"num_layers": 1, "hidden_size": 32, "num_heads": 1, "intermediate_size": 32},
            "cached_layers": list(LAYERS),
            "rows": len(train),
            "mean_length": round(mean_length, 2),
            "torch_threads": 1,
            "timed_epochs": args.timed_epochs,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
