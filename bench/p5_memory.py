"""P5: stage-two peak RSS with a 4x larger cache / with a 1x cache (goal <= 1.1: the cache is streamed, never loaded).

    python bench/p5_memory.py [--rows 2000]

Builds a 1x and a 4x cache from real SST-2 with the real teacher, then trains the same 2-layer student for one epoch
from each in a fresh process and compares the processes' peak resident memory.
"""

import argparse
import json
import subprocess
import sys

from pipeline.extract import extract_cache

from common import WORK, fp16_extract, prepared, save, teacher_dir

CHILD = """
import json, sys
from pathlib import Path
from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_student
from pipeline.cache import TeacherCache
spec = StudentSpec(num_layers=2, hidden_size=384, init="random")
cfg = DistillConfig(epochs=1, batch_size=32, logging_steps=50)
result = distill_student(Path(sys.argv[1]), Path(sys.argv[2]), spec, cfg, seed=0)
print(json.dumps({"peak_rss_mb": result["summary"]["peak_rss_mb"], "seconds": result["summary"]["seconds"],
                  "cache_mb": TeacherCache(Path(sys.argv[1]), verify="none").manifest["bytes"] / 1e6}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    args = ap.parse_args()
    runs = {}
    for scale in (1, 4):
        splits, info = prepared(args.rows * scale, 200, val_examples=0)  # no tuning split: the caches are 1x and 4x
        cache = WORK / f"p5_cache_{scale}x"
        cfg = fp16_extract(layers=[2, 4, 6], shard_max_mb=64, device="cpu")
        extract_cache(teacher_dir(), splits, cache, cfg, info=info)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(cache), str(WORK / f"p5_student_{scale}x")],
            capture_output=True,
            text=True,
            check=True,
            env={"KD_LOG_LEVEL": "WARNING", "TQDM_DISABLE": "1", **__import__("os").environ},
        )
        runs[f"{scale}x"] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = runs["4x"]["peak_rss_mb"] / runs["1x"]["peak_rss_mb"]
    save(
        "p5_memory",
        {
            "figure": "P5 peak RSS 4x cache / 1x cache",
            "ratio": round(ratio, 3),
            "goal": "<= 1.1",
            "runs": runs,
            "train_rows_1x": args.rows,
        },
    )


if __name__ == "__main__":
    main()
