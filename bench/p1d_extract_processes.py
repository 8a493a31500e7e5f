"""Extraction scaling with processes: the same extraction under torchrun with 1, 2, ... processes, same rows.

    python bench/p1d_extract_processes.py [--rows 8000] [--nproc 1,2] [--threads-total 2]

Each run is `torch.distributed.run --standalone --nproc-per-node N` around `extract_cache` (the gloo backend on the CPU,
NCCL with one GPU per process), with the machine's cores shared out: each process gets threads-total / N intra-op
threads (default: all cores), so the figure is what splitting one machine's extraction into processes gains or costs.
Reported per N: wall seconds of the launch (process start-up and model load included) and the extraction's own
seconds (its slowest rank), and a check that the cache equals the 1-process cache row for row.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from pipeline.cache import TeacherCache
from pipeline.data import save_prepared

from common import ROOT, WORK, machine, prepared, save, teacher_dir

JOB = r"""
import json, sys
from pathlib import Path
from pipeline.config import ExtractConfig
from pipeline.data import load_prepared
from pipeline.extract import extract_cache

splits, info = load_prepared(Path(sys.argv[1]))
cfg = ExtractConfig(layers=[2, 4, 6], dtype="float16", rank=None, batch_size=64, device=sys.argv[4])
result = extract_cache(Path(sys.argv[2]), splits, Path(sys.argv[3]), cfg, info=info)
if result is not None:
    print("RESULT " + json.dumps({"stats": result["stats"], "bytes": result["manifest"]["bytes"]}))
"""


def rows_of(cache_dir):
    cache = TeacherCache(cache_dir, verify="none")
    out = []
    for name in cache.splits:
        split = cache.split(name)
        for i in range(len(split)):
            row = split[i]
            out.append((row["example_id"], row["logits"].tobytes(), row["hidden_6"].tobytes()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8000)
    ap.add_argument("--nproc", default="1,2")
    ap.add_argument("--threads-total", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    teacher = teacher_dir()
    splits, info = prepared(args.rows, None, tokenizer_dir=teacher)
    data = WORK / "p1d_prepared"
    shutil.rmtree(data, ignore_errors=True)
    save_prepared(data, splits, info)
    script = WORK / "p1d_job.py"
    script.write_text(JOB)
    runs, reference = [], None
    for n in [int(x) for x in args.nproc.split(",")]:
        out = WORK / f"p1d_cache_{n}"
        shutil.rmtree(out, ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads_total // n)), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
        started = time.perf_counter()
        proc = subprocess.run(
            [*cmd, str(script), str(data), str(teacher), str(out), args.device], capture_output=True, text=True, env=env
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(proc.stderr[-4000:])
        result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
        per_rank = [s.get("seconds_per_rank") for s in result["stats"].values()]
        # splits run one after another; under torchrun a split's seconds are its slowest rank's (extract's stats)
        extraction = sum(s["seconds"] for s in result["stats"].values())
        rows = rows_of(out)
        reference = rows if reference is None else reference
        runs.append(
            {
                "nproc": n,
                "threads_per_process": max(1, args.threads_total // n),
                "launch_wall_s": round(wall, 1),
                "extraction_s": round(extraction, 1),
                "seconds_per_rank": per_rank,
                "rows_equal_one_process": rows == reference,
                "cache_bytes": result["bytes"],
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["extraction_s"]
    for run in runs:
        run["speedup_vs_first"] = round(base / run["extraction_s"], 3)
    save(
        "p1d_extract_processes",
        {
            "figure": "extraction under torchrun with N processes sharing the machine",
            "machine": machine(),
            "rows": sum(len(s) for s in splits.values()),
            "tokens": int(sum(np.sum(s["length"]) for s in splits.values())),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
