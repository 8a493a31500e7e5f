"""P3: total wall time of offline KD (one extraction + N students from the cache) / online KD (the same students with
the teacher run inside every step), bert-base-sized teacher (goal <= 0.5).

    python bench/p3_offline_vs_online.py [--rows 1000] [--epochs 3]

On the GPU when there is one (extraction and students); the result is named `p3_offline_vs_online[_cuda]`.

The teacher is a randomly initialised BERT-base shape (12 x 768, 110M parameters; no hub here, and speed does not
depend on the weights). Both sides use the same DistillationModule loss, student loop, sampler, students and seeds; the
online side (`OnlineDistillationModule`) differs only in calling the teacher instead of reading the cache.
"""

import argparse
import shutil

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from pipeline.cache import TeacherCache, hidden_field
from pipeline.config import DistillConfig, StudentSpec
from pipeline.extract import extract_cache
from pipeline.kd import DistillationModule, OnlineDistillationModule, train_student, train_student_online
from pipeline.layers import LayerPlan, hidden_layer_pairs
from pipeline.students import build_student

from common import WORK, Timer, fp16_extract, prepared, save, teacher_dir

STUDENTS = {"l2_h384": (2, 384, 12), "l3_h384": (3, 384, 12), "l4_h256": (4, 256, 4), "l6_h256": (6, 256, 4)}


def bert_base_teacher(vocab_size: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        num_labels=2,
        architectures=["BertForSequenceClassification"],
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    return BertForSequenceClassification(config).eval()


def make_student(name, teacher_cfg):
    layers, hidden, heads = STUDENTS[name]
    spec = StudentSpec(num_layers=layers, hidden_size=hidden, num_heads=heads, init="random")
    return build_student(spec, teacher_cfg, ["negative", "positive"], None, seed=0)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--epochs", type=float, default=3)
    args = ap.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir())
    splits, info = prepared(args.rows, 64, val_examples=0)  # the rows trained on, no tuning split to extract
    teacher = bert_base_teacher(len(tokenizer))
    tdir = WORK / "p3_bert_base"
    teacher.save_pretrained(tdir)
    tokenizer.save_pretrained(tdir)
    teacher_cfg = teacher.config.to_dict()
    pairs_of = {n: hidden_layer_pairs(STUDENTS[n][0], 12, list(range(1, 13))) for n in STUDENTS}
    layers = sorted({t for pairs in pairs_of.values() for _, t in pairs})
    cfg = DistillConfig(epochs=args.epochs, batch_size=32, alpha=0.5, beta=0.5, gamma=1.0, temperature=2.0, logging_steps=1000)

    cache_dir = WORK / "p3_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    times = {}
    with Timer() as extraction:
        extract_cache(tdir, splits, cache_dir, fp16_extract(layers=layers), info=info)
    times["extract"] = extraction.seconds
    cache = TeacherCache(cache_dir)
    for name in STUDENTS:
        cols = ["logits"] + [hidden_field(t) for _, t in pairs_of[name]]
        module = DistillationModule(make_student(name, teacher_cfg), cfg, LayerPlan(pairs_of[name], 768))
        with Timer() as t:
            train_student(module, cache.split("train", cols), None, cfg, 0)
        times[f"offline_{name}"] = t.seconds
    for name in STUDENTS:
        module = OnlineDistillationModule(make_student(name, teacher_cfg), teacher, cfg, pairs_of[name])
        with Timer() as t:
            train_student_online(module, splits["train"], tokenizer, cfg)
        times[f"online_{name}"] = t.seconds
    offline = times["extract"] + sum(v for k, v in times.items() if k.startswith("offline_"))
    online = sum(v for k, v in times.items() if k.startswith("online_"))
    save(
        "p3_offline_vs_online" + ("_cuda" if torch.cuda.is_available() else ""),
        {
            "figure": "P3 offline (extract once + students from cache) / online KD wall time",
            "goal": "<= 0.5",
            "ratio": round(offline / online, 3),
            "offline_s": round(offline, 1),
            "online_s": round(online, 1),
            "seconds": {k: round(v, 1) for k, v in times.items()},
            "students": list(STUDENTS),
            "epochs": args.epochs,
            "train_rows": len(splits["train"]),
            "teacher": "BERT-base shape 12x768 (110M params, random weights)",
            "cached_layers": layers,
            "cache_mb": round(cache.manifest["bytes"] / 1e6, 1),
        },
    )


if __name__ == "__main__":
    main()
