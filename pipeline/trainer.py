"""The one training loop, transformers' Trainer, as the teacher and the students share it: arguments built from a
config section, length-grouped batches, the optimizer and schedule choices, and the log history as CSV."""

from __future__ import annotations

import csv
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import seed_worker

from pipeline.checkpoints import Checkpoints
from pipeline.config import DistillConfig, TeacherConfig


def optimizer_choice(name: str, learning_rate: float, momentum: float = 0.9) -> tuple[type, dict] | None:
    """Trainer's `optimizer_cls_and_kwargs` for `name`; None keeps the Trainer's AdamW (decoupled weight decay).
    The Trainer still builds the parameter groups (no decay on biases and norms), so Adam's decay is plain L2."""
    if name == "adam":
        return torch.optim.Adam, {"lr": learning_rate}
    if name == "sgd":
        return torch.optim.SGD, {"lr": learning_rate, "momentum": momentum}
    return None


def step_schedule(warmup_steps: int, total_steps: int, stages: int, gamma: float):
    """Linear warm-up, then the rate multiplied by `gamma` at the start of each of `stages` equal stages after the first."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return gamma ** min(stages - 1, stages * step // max(1, total_steps))

    return factor


class LengthGroupedTrainer(Trainer):
    """A Trainer whose training batches group examples of similar length (padding is per batch), given the lengths.

    `staged` = (stages, gamma) replaces the scheduler with `step_schedule`. `batch_tokens` (the global budget) cuts
    the training batches by `TokenBudgetBatchSampler` instead, each process taking batch_tokens / processes.
    """

    def __init__(
        self,
        *args,
        lengths: np.ndarray,
        staged: tuple[int, float] | None = None,
        batch_tokens: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.lengths = [int(n) for n in lengths]
        self.staged = staged
        self.batch_tokens = batch_tokens

    def _get_train_sampler(self, train_dataset=None):
        return EpochLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, self.lengths, self.args.seed
        )

    def get_train_dataloader(self):
        """Token-budget batches when `batch_tokens` is set. Accelerate deals them out to the processes in turn (its
        batch-sampler shard) and `set_epoch` reaches the sampler through it, as the Trainer's own loader's does."""
        if not self.batch_tokens:
            return super().get_train_dataloader()
        args = self.args
        sampler = TokenBudgetBatchSampler(self.lengths, self.batch_tokens // args.world_size, args.train_batch_size, args.seed)
        workers = args.dataloader_num_workers
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers and workers > 0,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=args.process_index),
            **({"prefetch_factor": args.dataloader_prefetch_factor} if workers else {}),
        )
        return self.accelerator.prepare(loader)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint of a module that is not a PreTrainedModel (a student inside its distillation module) is a
        plain state dict in safetensors, which refuses tensors sharing memory (a masked-LM student's tied output
        weights): those are written as copies, and load back into the one shared tensor."""
        if state_dict is None and not isinstance(self.model, PreTrainedModel):
            seen, state_dict = set(), {}
            for name, tensor in self.model.state_dict().items():
                shared = tensor.untyped_storage().data_ptr() in seen
                seen.add(tensor.untyped_storage().data_ptr())
                state_dict[name] = tensor.clone() if shared else tensor
        super()._save(output_dir, state_dict)

    def fit(self, checkpoints: Checkpoints | None = None) -> None:
        """train(), resuming from the last complete checkpoint of `checkpoints` when an earlier run left one."""
        if checkpoints is None:
            self.train()
            return
        self.add_callback(checkpoints.callback())
        self.train(resume_from_checkpoint=checkpoints.latest())

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.staged is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        schedule = step_schedule(self.args.get_warmup_steps(num_training_steps), num_training_steps, *self.staged)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
        return self.lr_scheduler


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order whose epoch e is the (e+1)-th draw of a generator seeded with `seed`: the same order an
    uninterrupted run gives, also when a resumed run starts at epoch e (the Trainer calls `set_epoch`)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):  # replay the earlier epochs' draws (a permutation each: cheap)
            get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """Training batches under a token budget: the rows sorted by length (rows of equal length in a seeded random
    order), cut into batches of at most `max_rows` rows whose padded size, rows x the longest row, stays within
    `budget` tokens (a row longer than the budget goes alone), the batches then shuffled. Short rows go many to a
    batch and long ones few, so every batch fills about the same compute with almost no padding.

    Epoch e's batches are a function of (seed, e) alone: a resumed run sees the batches an uninterrupted one would.
    The number of batches is the same every epoch (it depends on the sorted lengths only), as the Trainer's step
    count and schedule need.
    """

    def __init__(self, lengths, budget: int, max_rows: int, seed: int):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.seed, self.epoch = int(seed), 0
        # where the length-sorted rows are cut: the sorted lengths are the same whatever order the ties take, so the
        # cuts (and the batch count) are fixed once; a batch's last row is its longest
        self.cuts, start = [], 0
        for i, size in enumerate(np.sort(self.lengths).tolist()):
            rows = i - start + 1
            if i > start and (rows > max_rows or rows * size > budget):
                self.cuts.append(i)
                start = i

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cuts) + 1

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.lexsort((rng.permutation(len(self.lengths)), self.lengths))  # by length, ties in seeded order
        batches = np.split(order, self.cuts)
        for b in rng.permutation(len(batches)):
            yield batches[b].tolist()


def training_arguments(
    output_dir: Path | str,
    cfg: TeacherConfig | DistillConfig,
    seed: int,
    eval_each_epoch: bool = True,
    checkpoints: Checkpoints | None = None,
    world: int = 1,
) -> TrainingArguments:
    """Trainer arguments from a config section: warm-up then linear (or cosine) decay, clipping at max_grad_norm.
    With `checkpoints` the Trainer saves resumable checkpoints into its work dir every `checkpoints.every` steps (its
    callback adds one at each epoch end); otherwise `output_dir` is scratch and nothing is saved (stages save with
    save_pretrained). A 'step' scheduler is set up by `LengthGroupedTrainer(staged=...)`. Under torchrun (`world`
    processes, DDP through the Trainer's Accelerate) `cfg.batch_size` stays the global batch: each process takes its
    share, so the steps and the schedule are those of one process. The teacher section has no
    scheduler, clipping, logging or worker knobs: it trains with the defaults below."""
    scheduler = getattr(cfg, "scheduler", "linear")
    gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(checkpoints.work if checkpoints is not None else output_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size // world,
        per_device_eval_batch_size=max(cfg.batch_size, 64),
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine" if scheduler == "cosine" else "linear",
        # on a GPU: bf16 autocast and the fused AdamW kernel; the CPU keeps fp32 and the plain AdamW (same figures)
        optim="adamw_torch_fused" if gpu else "adamw_torch",
        bf16=gpu and torch.cuda.is_bf16_supported(),
        max_grad_norm=getattr(cfg, "max_grad_norm", 1.0),
        seed=seed,
        data_seed=seed,
        logging_steps=getattr(cfg, "logging_steps", 10),
        save_strategy="steps" if checkpoints is not None and checkpoints.every else "no",
        save_steps=checkpoints.every if checkpoints is not None and checkpoints.every else 500,
        eval_strategy="epoch" if eval_each_epoch else "no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=getattr(cfg, "num_workers", 0),
        torch_compile=getattr(cfg, "compile", False),
        dataloader_pin_memory=torch.cuda.is_available(),
        label_names=["labels"],
        # progress bars only on a terminal: under DVC, carriage-return updates would fill the logs
        disable_tqdm=not sys.stderr.isatty(),
        remove_unused_columns=False,
    )


def write_history_csv(history: list[dict], path: Path) -> None:
    """Trainer log history -> one CSV row per log step (DVC plots read it)."""
    rows = [h for h in history if "loss" in h or "eval_accuracy" in h or "eval_f1" in h]
    keys = ["step", "epoch"] + sorted({k for h in rows for k in h} - {"step", "epoch"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(rows)


def scratch_dir() -> str:
    """Trainer needs an output_dir; stages save through save_pretrained, so it is scratch."""
    return tempfile.mkdtemp(prefix="kd-trainer-")
