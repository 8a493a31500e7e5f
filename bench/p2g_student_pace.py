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
so the same padding: what is left between the two is the loop, not the batches). The two sides run interleaved (on
the CPU a plain step after each of stage two's steps, on a GPU a plain epoch after each of its epochs; see
`Interleaved`), 1 + `--timed-epochs` epochs, the first a warm-up: the ratio is the median over the timed epochs, so
this VM's drift falls on both sides alike.
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
from pipeline.config import DistillConfig, StudentSpec
from pipeline.extract import extract_cache, resolve_device
from pipeline.kd import DistillationModule, train_student
from pipeline.layers import LayerPlan, hidden_layer_pairs
from pipeline.students import build_student

from common import WORK, fp16_extract, machine, prepared, save, teacher_dir

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
    """Stage two and the plain loop in turn, so this VM's drift (10-20% from one minute to the next, more between
    runs) falls on both sides alike. On the CPU a plain step follows each of stage two's steps: stage two's time is
    from the end of one plain step to the end of its next step (its bookkeeping, the next batch's read and collation,
    the step), the plain loop's its steps alone. On a GPU, where a per-step sync would stall stage two's host running
    ahead, a plain epoch follows each of stage two's epochs instead."""

    def __init__(self, rows: int, plain):
        self.rows, self.plain, self.per_step = rows, plain, not torch.cuda.is_available()
        self.ours, self.theirs = [], []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.mark, self.our_s, self.plain_s, self.plain_rows = time.perf_counter(), 0.0, 0.0, 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.per_step:
            started = time.perf_counter()
            self.our_s += started - self.mark
            self.plain_rows += self.plain.step()
            self.mark = time.perf_counter()
            self.plain_s += self.mark - started

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.per_step:
            self.ours.append(self.rows / self.our_s)
            self.theirs.append(self.plain_rows / self.plain_s)
            return
        torch.cuda.synchronize()
        self.ours.append(self.rows / (time.perf_counter() - self.mark))
        self.theirs.append(self.plain.epoch())


def paced(cache, train, batch_size, device, workers=0, batch_tokens=None, spec=L3, timed=1) -> dict:
    """1 + `timed` epochs through the product's path, interleaved with the plain loop on the same batches (the
    first epoch warms every batch shape up and is not counted). The ratio is the median over the timed epochs of
    stage two's rows/s / the plain loop's; rows/s are the medians of each side."""
    plain = PlainLoop(cache, train, batch_size, device, batch_tokens, spec)
    module, cfg = module_for(cache, batch_size, workers, batch_tokens, spec)
    cfg.epochs = 1 + timed
    clock = Interleaved(len(train), plain)
    train_student(module, train, None, cfg, 0, callbacks=[clock])
    ours, theirs = np.array(clock.ours[1:]), np.array(clock.theirs[1:])
    return {
        "stage_two_rows_s": round(float(np.median(ours)), 1),
        "plain_rows_s": round(float(np.median(theirs)), 1),
        "ratio": round(float(np.median(ours / theirs)), 3),
        "epoch_ratios": [round(float(r), 3) for r in ours / theirs],
        "interleaved": "step" if clock.per_step else "epoch",
    }


class PlainLoop:
    """The plain loop over the sampler's first-epoch batches, collated and moved to the device up front, warmed up by
    one epoch (every batch shape once): `step()` trains the next batch of a shuffled cycle and returns its rows;
    `epoch()` trains one epoch and returns its rows/s."""

    def __init__(self, cache, train, batch_size, device, batch_tokens=None, spec=L3):
        module, cfg = module_for(cache, batch_size, spec=spec)
        self.module, self.cfg, self.device = module.to(device).train(), cfg, device
        collate = CacheCollator(sorted(t for _, t in module.pairs), 0)
        if batch_tokens:  # the token-budget sampler's batches (its first epoch)
            chunks = list(TokenBudgetBatchSampler(train.lengths(), batch_tokens, batch_size, seed=0))
        else:  # the length-grouped sampler's batches (its first epoch), padded as stage two pads them
            order = list(EpochLengthGroupedSampler(batch_size, train.lengths().tolist(), seed=0))
            chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        self.batches = [{k: v.to(device) for k, v in collate([train[int(i)] for i in c]).items()} for c in chunks]
        self.rows = sum(len(b["input_ids"]) for b in self.batches)
        self.cuda = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.learning_rate, fused=self.cuda)
        self.rng, self.queue = np.random.default_rng(0), []
        self.epoch()

    def step(self) -> int:
        if not self.queue:
            self.queue = self.rng.permutation(len(self.batches)).tolist()
        batch = self.batches[self.queue.pop()]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            loss = self.module(**batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return len(batch["input_ids"])

    def epoch(self) -> float:
        started, self.queue = time.perf_counter(), []
        for _ in range(len(self.batches)):
            self.step()
        if self.cuda:
            torch.cuda.synchronize()
        return self.rows / (time.perf_counter() - started)


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
    extract_cache(teacher, splits, cache_dir, fp16_extract(layers=list(LAYERS), device=str(device)), info=info)
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
