"""Join one-seed student runs into one student with `seeds/<seed>/` beside the first seed's model, and the training
summary `distill.seeds` would have written (first seed's summary, every seed's time and per-epoch tuning score), so
evaluate and report read bench runs like a multi-seed distill stage. Used by bench/issue15.sh's seeds and variants arms:

    python bench/seedjoin.py OUT_STUDENT OUT_TRAIN_JSON STUDENT_DIR=TRAIN_JSON [STUDENT_DIR=TRAIN_JSON ...]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path


def join(out: Path, runs: list[tuple[Path, dict]]) -> dict:
    """Copy the runs (student dir, its training summary) into `out`, first as the primary; return the summary."""
    seeds = [train["seed"] for _, train in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"seedjoin: runs share a seed ({seeds}); give each run its own seed")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(runs[0][0], out)
    for (student, _), seed in zip(runs[1:], seeds[1:]):
        shutil.copytree(student, out / "seeds" / str(seed))
    (out / "distill.json").write_text(json.dumps({"seed": seeds[0], "seeds": seeds}, indent=2) + "\n")
    seconds = [train["seconds"] for _, train in runs]
    return dict(
        runs[0][1],
        seed=seeds[0],
        seeds=seeds,
        seconds_mean=round(statistics.mean(seconds), 1),
        seconds_std=round(statistics.stdev(seconds), 1) if len(seconds) > 1 else 0.0,
        seed_runs=[
            {"seed": s, "seconds": t["seconds"], "eval_accuracy_per_epoch": t.get("eval_accuracy_per_epoch")}
            for s, (_, t) in zip(seeds, runs)
        ],
    )


def main(argv: list[str]) -> None:
    out, summary_path, *pairs = argv
    runs = []
    for pair in pairs:
        student, train = pair.split("=", 1)
        runs.append((Path(student), json.loads(Path(train).read_text())))
    summary = join(Path(out), runs)
    Path(summary_path).write_text(json.dumps(summary, indent=2) + "\n")
    print(Path(out).name, "seeds", summary["seeds"])


if __name__ == "__main__":
    main(sys.argv[1:])
