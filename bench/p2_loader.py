"""P2: student training steps/s streaming from the cache / from the same rows already in memory (goal >= 0.95).

    python bench/p2_loader.py [--rows 2000] [--workers 0]

Both runs use the same Trainer, collator, sampler, student and seed; only the dataset differs: the memory-mapped
cache split, or a list holding private in-RAM copies of every row.
"""

import argparse
import shutil

import numpy as np
import torch

from pipeline.cache import TeacherCache, hidden_field
from pipeline.config import DistillConfig, StudentSpec
from pipeline.extract import extract_cache
from pipeline.kd import DistillationModule, train_student
from pipeline.layers import LayerPlan, hidden_layer_pairs
from pipeline.students import build_student

from common import WORK, fp16_extract, prepared, save, teacher_dir


class InMemoryRows(list):
    def lengths(self):
        return np.array([r["length"] for r in self])


def steps_per_second(train, dev, manifest, workers):
    spec = StudentSpec(num_layers=3, hidden_size=384, init="random", num_heads=12, intermediate_size=1536)
    import json

    teacher_cfg = json.loads((WORK / "p2_cache" / "teacher_config.json").read_text())
    student, _ = build_student(spec, teacher_cfg, manifest["label_names"], None, seed=0)
    pairs = hidden_layer_pairs(3, manifest["teacher"]["num_hidden_layers"], manifest["layers"])
    cfg = DistillConfig(
        epochs=1, batch_size=32, alpha=0.5, beta=0.5, gamma=1.0, temperature=2.0, logging_steps=1000, num_workers=workers
    )
    module = DistillationModule(student, cfg, LayerPlan(pairs, manifest["hidden_size"]))
    history = train_student(module, train, None, cfg, 0)
    return history[-1]["train_steps_per_second"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(0)
    splits, info = prepared(args.rows, 100)
    cache_dir = WORK / "p2_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cfg = fp16_extract(layers=[2, 4, 6], shard_max_mb=32, device="cpu")
    extract_cache(teacher_dir(), splits, cache_dir, cfg, info=info)
    cache = TeacherCache(cache_dir)
    columns = ["logits"] + [hidden_field(layer) for layer in (2, 4, 6)]
    stream, dev = cache.split("train", columns), cache.split("dev", columns)
    memory = InMemoryRows(
        {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in stream[i].items()} for i in range(len(stream))
    )
    rates = {}
    for name, data in (("memory", memory), ("cache", stream), ("memory_again", memory), ("cache_again", stream)):
        rates[name] = steps_per_second(data, dev, cache.manifest, args.workers)
    cache_rate = (rates["cache"] + rates["cache_again"]) / 2
    memory_rate = (rates["memory"] + rates["memory_again"]) / 2
    save(
        "p2_loader",
        {
            "figure": "P2 steps/s from the cache / steps/s from memory",
            "goal": ">= 0.95",
            "ratio": round(cache_rate / memory_rate, 3),
            "steps_per_s": rates,
            "rows": args.rows,
            "dataloader_workers": args.workers,
            "cache_mb": round(cache.manifest["bytes"] / 1e6, 1),
        },
    )


if __name__ == "__main__":
    main()
