"""P2g: a student's training rows/s from the cache (the product's stage two) / a plain loop over the same batches
already on the device (goal >= 0.95 at batch 32 and 64).

    python bench/p2g_student_pace.py [--rows 4000] [--batch-sizes 32,64,256] [--device auto] [--batch-tokens N]

Stage two: `train_student` over the memory-mapped cache split (StudentLoop, length-grouped sampler, CacheCollator), no
evaluation. Plain loop: the same student (l3: 3 x 384, the default run's shape), the same DistillationModule loss (CE
+ T^2 KL + hidden MSE over layers 2, 4, 6), every batch collated beforehand and moved to the device, warmed up by one
epoch: forward / backward / clip / AdamW step / zero_grad, nothing
else: what the hardware allows this loss. On a GPU both sides run bf16 autocast, and the plain loop uses fused AdamW.
With `--batch-tokens N` stage two runs `distill.batch_tokens: N` (at most batch-size rows a batch) and the plain loop
takes the same sampler's batches; without it, the length-grouped sampler's batches of batch-size rows (the same rows,
so the same padding: what is left between the two is the loop, not the batches). The two sides run interleaved, an
epoch of each in turn (1 + `--timed-epochs` pairs; the first warms up): the ratio is the median over the timed pairs,
so this VM's drift from one minute to the next falls on both sides alike.
"""

import argparse
import json
import shutil
import time

import numpy as np
import torch
from transformers import TrainerCallback

from pipeline.batching import EpochLengthGroupedSampler, TokenBudgetBatchSampler
from pipeline.cache import TeacherCache, hidden_field
from pipeline.collate import CacheCollator
from pipeline.config import DistillConfig, ExtractConfig, StudentSpec
from pipeline.extract import extract_cache, resolve_device
from pipeline.kd import DistillationModule, train_student
from pipeline.layers import LayerPlan, hidden_layer_pairs
from pipeline.students import build_student

from common import WORK, machine, prepared, save, teacher_dir

LAYERS = (2, 4, 6)
L3 = StudentSpec(num_layers=3, hidden_size=384, init="random", num_heads=12, intermediate_size=1536)


def module_for(
    cache: TeacherCache, batch_size: int, workers: int = 0, batch_tokens: int | None = None, spec: StudentSpec = L3
) -> tuple[DistillationModule, DistillConfig]:
    teacher_cfg = json.loads((cache.cache_dir / "teacher_config.json").read_text())
    student, _ = build_student(spec, teacher_cfg, cache.label_names, None, seed=0)
    pairs = hidden_layer_pairs(spec.num_layers, cache.manifest["teacher"]["num_hidden_layers"], cache.layers)
    cfg = DistillConfig(epochs=1, batch_size=batch_size, batch_tokens=batch_tokens, logging_steps=1000, num_workers=workers)
    return DistillationModule(student, cfg, LayerPlan(pairs, cache.manifest["hidden_size"])), cfg


class Interleaved(TrainerCallback):
    """Times each of stage two's epochs and, after each, one epoch of the plain loop: pairs measured side by side,
    so this VM's drift (10-20% from one minute to the next) falls on both sides of each pair alike."""

    def __init__(self, rows: int, plain_epoch):
        self.rows, self.plain_epoch = rows, plain_epoch
        self.ours, self.plain, self.began = [], [], 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ours.append(self.rows / (time.perf_counter() - self.began))
        self.plain.append(self.plain_epoch())


def paced(cache, train, batch_size, device, workers=0, batch_tokens=None, spec=L3, timed=1) -> dict:
    """1 + `timed` epochs through the product's path, each followed by one epoch of the plain loop on the same
    batches (the first pair warms every batch shape up and is not counted). The ratio is the median over the timed
    pairs of stage two's rows/s / the plain loop's; rows/s are the medians of each side."""
    plain_epoch = plain_loop(cache, train, batch_size, device, batch_tokens, spec)
    module, cfg = module_for(cache, batch_size, workers, batch_tokens, spec)
    cfg.epochs = 1 + timed
    clock = Interleaved(len(train), plain_epoch)
    train_student(module, train, None, cfg, 0, callbacks=[clock])
    ours, plain = np.array(clock.ours[1:]), np.array(clock.plain[1:])
    return {
        "stage_two_rows_s": round(float(np.median(ours)), 1),
        "plain_rows_s": round(float(np.median(plain)), 1),
        "ratio": round(float(np.median(ours / plain)), 3),
        "pair_ratios": [round(float(r), 3) for r in ours / plain],
    }


def plain_loop(cache, train, batch_size, device, batch_tokens=None, spec=L3):
    """The plain loop, built and warmed up (every batch shape once): a function that trains one epoch and returns
    its rows/s."""
    module, cfg = module_for(cache, batch_size, spec=spec)
    module.to(device).train()
    collate = CacheCollator(sorted(t for _, t in module.pairs), 0)
    if batch_tokens:  # the token-budget sampler's batches (its first epoch)
        chunks = list(TokenBudgetBatchSampler(train.lengths(), batch_tokens, batch_size, seed=0))
    else:  # the length-grouped sampler's batches (its first epoch), padded as stage two pads them
        order = list(EpochLengthGroupedSampler(batch_size, train.lengths().tolist(), seed=0))
        chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    batches = []
    for chunk in chunks:
        batch = collate([train[int(i)] for i in chunk])
        batches.append({k: v.to(device) for k, v in batch.items()})
    rows = sum(len(b["input_ids"]) for b in batches)
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.learning_rate, fused=cuda)
    rng = np.random.default_rng(0)

    def epoch() -> float:
        started = time.perf_counter()
        for b in rng.permutation(len(batches)):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = module(**batches[b])["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return rows / (time.perf_counter() - started)

    epoch()
    return epoch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--batch-sizes", default="32,64,256")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="distill.num_workers for stage two (DataLoader collation)")
    ap.add_argument("--batch-tokens", type=int, default=0, help="distill.batch_tokens for both sides; 0 = row batches")
    ap.add_argument("--timed-epochs", type=int, default=2, help="timed pairs after the warm-up pair")
    args = ap.parse_args()
    device = resolve_device(args.device)
    teacher = teacher_dir()
    splits, info = prepared(args.rows, 100, tokenizer_dir=teacher)
    cache_dir = WORK / "p2g_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    extract_cache(teacher, splits, cache_dir, ExtractConfig(layers=list(LAYERS), device=str(device)), info=info)
    cache = TeacherCache(cache_dir)
    columns = ["logits"] + [hidden_field(layer) for layer in LAYERS]
    train = cache.split("train", columns)
    runs = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        torch.manual_seed(0)
        tokens = args.batch_tokens or None
        runs.append(
            {
                "batch_size": batch_size,
                "batch_tokens": tokens,
                **paced(cache, train, batch_size, device, args.workers, tokens, timed=args.timed_epochs),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    save(
        f"p2g_student_pace_{device.type}"
        + (f"_w{args.workers}" if args.workers else "")
        + (f"_t{args.batch_tokens}" if args.batch_tokens else ""),
        {
            "figure": "P2g student rows/s from the cache / plain loop on device tensors, same batch",
            "goal": ">= 0.95 at batch 32 and 64",
            "timed_epochs": args.timed_epochs,
            "machine": machine(),
            "device": str(device),
            "rows": len(train),
            "dataloader_workers": args.workers,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
