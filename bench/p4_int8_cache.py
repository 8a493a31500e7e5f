"""P4: cache bytes per token per layer, and the accuracy cost of the int8 cache on SST-2 with the real MiniLM teacher
(goal: <= 0.2 point loss at <= hidden + 8 bytes per token per layer).

    python bench/p4_int8_cache.py [--seeds 0 1] [--student l3]

Uses the default params (data subset, student spec, distill settings) and the fine-tuned teacher of the default run
(`dvc repro` first), extracts the same rows as float16 and as int8, distils the same student from each under each seed,
and compares dev accuracy.
"""

import argparse
import dataclasses
import shutil

import numpy as np

from pipeline.config import ExtractConfig
from pipeline.data import load_prepared
from pipeline.distill import distill_student
from pipeline.evaluation import evaluate_saved_model
from pipeline.extract import extract_cache
from pipeline.params import load_params

from common import ROOT, WORK, save


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--student", default="l3")
    ap.add_argument("--epochs", type=float, default=2.0, help="distill epochs over the labeled rows (the figure used 2)")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    teacher = ROOT / "artifacts/teacher"
    if not (teacher / "model.safetensors").is_file():
        raise SystemExit("run `dvc repro` first: P4 needs the fine-tuned teacher and prepared data of the default run")
    splits, info = load_prepared(ROOT / "data/prepared")
    spec = params.students[args.student]
    cfg, _ = params.distill_for(args.student)
    cfg = dataclasses.replace(cfg, epochs=args.epochs)
    result = {"student": args.student, "seeds": args.seeds, "epochs": args.epochs, "train_rows": len(splits["train"]), "runs": {}}
    for dtype in ("float16", "int8"):
        cache = WORK / f"p4_cache_{dtype}"
        shutil.rmtree(cache, ignore_errors=True)
        cfg = ExtractConfig(layers=params.extract.layers, dtype=dtype, device="cpu")
        m = extract_cache(teacher, splits, cache, cfg, info=info)["manifest"]
        tokens = sum(s["tokens"] for s in m["splits"].values())
        hidden_bytes = sum(s["bytes"] for s in m["splits"].values() for s in s["shards"])
        accs = []
        for seed in args.seeds:
            out = WORK / f"p4_student_{dtype}_{seed}"
            distill_student(cache, out, spec, cfg, seed=seed, teacher_dir=teacher)
            accs.append(evaluate_saved_model(out, cache, batch_size=64, latency_batch_sizes=[], latency_repeats=1)["accuracy"])
        result["runs"][dtype] = {
            "dev_accuracy": accs,
            "mean": float(np.mean(accs)),
            "cache_mb": round(m["bytes"] / 1e6, 1),
            "bytes_per_token": round(hidden_bytes / tokens, 1),
            "bytes_per_token_per_layer": round(hidden_bytes / tokens / len(m["layers"]), 1),
        }
    fp, q = result["runs"]["float16"], result["runs"]["int8"]
    result.update(
        {
            "figure": "P4 int8 cache: accuracy cost and bytes/token/layer",
            "goal": "<= 0.2 point loss at <= hidden + 8 B/token/layer (hidden = 384 -> 392)",
            "accuracy_loss_points": round(100 * (fp["mean"] - q["mean"]), 2),
            "int8_bytes_per_token_per_layer": q["bytes_per_token_per_layer"],
            "fp16_bytes_per_token_per_layer": fp["bytes_per_token_per_layer"],
        }
    )
    save("p4_int8_cache", result)


if __name__ == "__main__":
    main()
