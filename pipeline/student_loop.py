"""Stage two's training loop, on Accelerate: the students (and the online-KD baseline) train here; the teacher keeps
transformers' Trainer (pipeline.trainer), with the same length-grouped batches (pipeline.batching).

Per step it does what a plain PyTorch loop does — forward under the accelerator's autocast, backward, clip, optimizer
and scheduler step, zero_grad — and nothing that waits for the device: the loss and its parts are summed on the
device and read back only at a log step. Accelerate gives DDP under torchrun (each process takes its turn of the
batches), bf16 on GPUs and the checkpoint state (`save_state` / `load_state`:
weights, optimizer, RNG states; the scheduler and the loop's own state registered beside them).

What the Trainer path guaranteed holds here too: epoch e's batches are a function of (seed, e); a run resumed from a
checkpoint skips the batches already trained without reading them and restores the RNG states where the
uninterrupted run had them, so it ends with the same weights (tests/test_train_resume.py); the log history has the
Trainer's shape (`loss`, `grad_norm`, `learning_rate`, `epoch`, `step`, the loss parts, `eval_*` per epoch), and
callbacks are transformers' `TrainerCallback`s, called with the DistillConfig as `args`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm
from transformers import TrainerControl, TrainerState, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names, nested_concat
from transformers.trainer_utils import EvalPrediction, seed_worker, set_seed

from pipeline.batching import EpochLengthGroupedSampler, TokenBudgetBatchSampler
from pipeline.checkpoints import PREFIX, Checkpoints
from pipeline.config import DistillConfig

log = logging.getLogger(__name__)

LOOP_STATE = "loop_state.json"
NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def optimizer_choice(name: str, learning_rate: float, momentum: float = 0.9) -> tuple[type, dict] | None:
    """(class, kwargs) for `name`; None: AdamW (decoupled weight decay). The parameter groups (no decay on biases
    and norms) are the same for all, so Adam's and SGD's decay is plain L2."""
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


class _Scheduled:
    """The scheduler as a checkpointed object: its state dict saved and loaded with the accelerator's state (it is not
    prepared: Accelerate would step it once per process)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def accelerator(unused_parameters: bool = False) -> Accelerator:
    """The device and precision a student trains with: bf16 autocast on a GPU that has it, fp32 on the CPU; DDP when
    started under torchrun, told when some parameters get no gradient in a step (a multi-task student's other heads).
    (Accelerate keeps one state per process, so per-student choices such as compiling are made outside it.)"""
    gpu = torch.cuda.is_available()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_parameters else []
    return Accelerator(
        cpu=not gpu, mixed_precision="bf16" if gpu and torch.cuda.is_bf16_supported() else "no", kwargs_handlers=handlers
    )


class StudentLoop:
    """Train `module` (its forward returns {"loss", ...}) on `train` batched by `collator`, as `cfg` says.

    `lengths` (per train row) drive the batches: length-grouped batches of cfg.batch_size rows, or token-budget
    batches (cfg.batch_tokens). With `dev`, each epoch ends with an evaluation: the loss, and `metrics`'
    compute_metrics (and preprocess_logits_for_metrics) over the logits the module returns in eval mode.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        train,
        collator,
        lengths,
        cfg: DistillConfig,
        seed: int,
        *,
        dev=None,
        metrics: dict | None = None,
        checkpoints: Checkpoints | None = None,
        callbacks=(),
        batches=None,
        unused_parameters: bool = False,
    ):
        gpu = torch.cuda.is_available()
        self.cfg, self.seed, self.core, self.dev = cfg, seed, module, dev
        self.metrics, self.checkpoints, self.callbacks = metrics or {}, checkpoints, list(callbacks)
        self.accelerator = accelerator(unused_parameters)
        acc = self.accelerator
        per_process = cfg.batch_size // acc.num_processes
        lengths = [int(n) for n in lengths]
        if batches is not None:  # a batch sampler of its own (pipeline.multitask's): per-process batches, dealt in turn
            self.sampler = batches
        elif cfg.batch_tokens:
            self.sampler = TokenBudgetBatchSampler(lengths, cfg.batch_tokens // acc.num_processes, per_process, seed)
            batches = self.sampler
        else:
            self.sampler = EpochLengthGroupedSampler(per_process, lengths, seed)
            batches = torch.utils.data.BatchSampler(self.sampler, per_process, drop_last=False)
        workers = cfg.num_workers
        loader = torch.utils.data.DataLoader(
            train,
            batch_sampler=batches,
            collate_fn=collator,
            num_workers=workers,
            pin_memory=gpu,
            persistent_workers=workers > 0,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=acc.process_index),
        )
        self.eval_loader = None
        if dev is not None:
            self.eval_loader = torch.utils.data.DataLoader(
                dev, batch_size=max(cfg.batch_size, 64), collate_fn=collator, num_workers=workers, pin_memory=gpu
            )
        set_seed(seed)  # dropout draws from here on, as the Trainer seeds them after the model is built
        model_optimizer = self._optimizer(module, gpu)
        self.model, self.optimizer, self.loader = acc.prepare(module, model_optimizer, loader)
        if cfg.compile:  # the training step's forward and backward through inductor (the weights stay `module`'s)
            self.model = torch.compile(self.model)
        self.steps_per_epoch = len(self.loader)
        self.max_steps = math.ceil(cfg.epochs * self.steps_per_epoch)
        self.epochs = math.ceil(cfg.epochs)
        warmup = math.ceil(self.max_steps * cfg.warmup_ratio)
        if cfg.scheduler == "step":
            schedule = step_schedule(warmup, self.max_steps, cfg.step_stages, cfg.step_gamma)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        else:
            self.scheduler = get_scheduler(cfg.scheduler, self.optimizer, warmup, self.max_steps)
        acc.register_for_checkpointing(_Scheduled(self.scheduler))
        self.state = TrainerState(max_steps=self.max_steps, num_train_epochs=self.epochs, logging_steps=cfg.logging_steps)
        self.control = TrainerControl()

    def _optimizer(self, module: torch.nn.Module, gpu: bool) -> torch.optim.Optimizer:
        """The Trainer's parameter groups (no weight decay on biases and norms) and optimizer choice."""
        decay = set(get_parameter_names(module, [torch.nn.LayerNorm], NO_DECAY))
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": self.cfg.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        choice = optimizer_choice(self.cfg.optimizer, self.cfg.learning_rate, self.cfg.momentum)
        if choice is None:
            return torch.optim.AdamW(groups, lr=self.cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=gpu or None)
        cls, kwargs = choice
        return cls(groups, **kwargs)

    def _call(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            control = getattr(callback, event)(self.cfg, self.state, self.control, model=self.core, **kwargs)
            if control is not None:
                self.control = control

    def fit(self) -> list[dict]:
        """Train to the end (resuming from the last complete checkpoint an interrupted run left); the log history."""
        acc, state = self.accelerator, self.state
        resume_rng, skip = None, 0
        latest = self.checkpoints.latest() if self.checkpoints is not None else None
        if latest is not None:
            acc.load_state(latest, strict=False)  # strict: off for a masked-LM student's tied output weights
            saved = json.loads((Path(latest) / LOOP_STATE).read_text())
            state.global_step, state.log_history = saved["global_step"], saved["log_history"]
            resume_rng, skip = _rng_state(), saved["global_step"] % self.steps_per_epoch
        first_epoch = state.global_step // self.steps_per_epoch
        self.core.train()
        self.tr_loss, self.last_logged = torch.zeros((), device=acc.device), state.global_step
        if latest is not None:  # the sums since the last log, so the next logged means are the uninterrupted run's
            self.tr_loss += saved["tr_loss"]
            self.last_logged = saved["last_logged"]
            self.core.running = {k: [torch.tensor(v[0], dtype=torch.float32), v[1]] for k, v in saved["running"].items()}
        started = time.perf_counter()
        self._call("on_train_begin")
        bar = tqdm(total=self.max_steps, initial=state.global_step, disable=not sys.stderr.isatty() or not acc.is_main_process)
        for epoch in range(first_epoch, self.epochs):
            if state.global_step >= self.max_steps:
                break
            self._call("on_epoch_begin")
            resuming = resume_rng is not None and epoch == first_epoch
            if resuming and not skip:
                _set_rng_state(resume_rng)  # an epoch-end checkpoint: the next epoch's draws start from its state
            loader = acc.skip_first_batches(self.loader, skip) if resuming and skip else self.loader
            loader.set_epoch(epoch)  # the loader's epoch reaches the sampler (a fresh skipping loader counts from 0)
            self.sampler.set_epoch(epoch)
            for i, batch in enumerate(loader):
                if resuming and skip and i == 0:
                    _set_rng_state(resume_rng)  # mid-epoch: restored once the skipped batches are passed
                self._step(batch, epoch, (skip if resuming else 0) + i + 1)
                bar.update()
                if self.control.should_training_stop or state.global_step >= self.max_steps:
                    break
            self._call("on_epoch_end")
            if self.dev is not None:
                self._log(self._evaluate())
            self._save()
            if self.control.should_training_stop:
                break
        bar.close()
        runtime = time.perf_counter() - started
        steps = state.global_step - (saved["global_step"] if latest is not None else 0)
        self._log({"train_runtime": round(runtime, 4), "train_steps_per_second": round(steps / max(runtime, 1e-9), 3)})
        self._call("on_train_end")
        return state.log_history

    def _step(self, batch: dict, epoch: int, step_in_epoch: int) -> None:
        acc, cfg, core, state = self.accelerator, self.cfg, self.core, self.state
        self._call("on_step_begin")
        if not core.training:
            core.train()
        end = getattr(core.cfg, "temperature_end", None) if hasattr(core, "cfg") else None
        if end is not None:
            core.temperature = core.cfg.temperature + (end - core.cfg.temperature) * state.global_step / self.max_steps
        with acc.autocast():
            loss = self.model(**batch)["loss"]
        acc.backward(loss)
        self.tr_loss += loss.detach()
        norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        self.optimizer.step()
        rate = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.epoch = epoch + step_in_epoch / self.steps_per_epoch
        self._call("on_step_end")
        if state.global_step % cfg.logging_steps == 0:
            loss_sum = float(acc.reduce(self.tr_loss, "mean"))
            logs = {"loss": loss_sum / (state.global_step - self.last_logged), "learning_rate": rate}
            if norm is not None:
                logs["grad_norm"] = float(norm)
            for k, (total, count) in getattr(core, "running", {}).items():
                logs[f"loss_{k}"] = float(total) / count
            if hasattr(core, "running"):
                core.running.clear()
                logs["temperature"] = core.temperature
            self.tr_loss.zero_()
            self.last_logged = state.global_step
            self._log(logs)
        every = self.checkpoints.every if self.checkpoints is not None else 0
        if every and state.global_step % every == 0 and step_in_epoch < self.steps_per_epoch:
            self._save()  # (an epoch's last step is saved at the epoch's end, after its evaluation)

    def _log(self, logs: dict) -> None:
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        if self.accelerator.is_main_process and not sys.stderr.isatty():
            log.info("%s", {k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()})
        self._call("on_log", logs=logs)

    @torch.no_grad()
    def _evaluate(self) -> dict:
        """Loss (mean over rows) and the task's metrics on the eval split, computed by the main process alone over
        all of it and shared with the others (the split is small; the result is that of a one-process run)."""
        acc, core = self.accelerator, self.core
        metrics = None
        if acc.is_main_process:
            started, core_mode = time.perf_counter(), core.training
            core.eval()
            total, rows, predictions, labels = 0.0, 0, None, None
            compute, prepare = self.metrics.get("compute_metrics"), self.metrics.get("preprocess_logits_for_metrics")
            for batch in self.eval_loader:
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                with acc.autocast():
                    out = core(**batch)
                n = len(batch["input_ids"])
                total, rows = total + float(out["loss"]) * n, rows + n
                if compute is not None and "logits" in out:
                    logits = prepare(out["logits"], batch["labels"]) if prepare else out["logits"]
                    logits = (logits.float() if logits.is_floating_point() else logits).cpu()
                    predictions = logits if predictions is None else nested_concat(predictions, logits, -100)
                    gold = batch["labels"].cpu()
                    labels = gold if labels is None else nested_concat(labels, gold, -100)
            metrics = {"eval_loss": total / max(rows, 1)}
            if predictions is not None:
                scores = compute(EvalPrediction(predictions=predictions.numpy(), label_ids=labels.numpy()))
                metrics.update({f"eval_{k}": float(v) for k, v in scores.items()})
            metrics["eval_runtime"] = round(time.perf_counter() - started, 4)
            core.train(core_mode)
        if acc.num_processes > 1:
            shared = [metrics]
            torch.distributed.broadcast_object_list(shared, src=0)
            metrics = shared[0]
        self._call("on_evaluate", metrics=metrics)
        return metrics

    def _save(self) -> None:
        """A resumable checkpoint of this step (every process writes its part), then made complete."""
        if self.checkpoints is None:
            return
        step, path = self.state.global_step, self.checkpoints.work / f"{PREFIX}{self.state.global_step}"
        if (path / "complete.json").is_file():
            return  # the last step's checkpoint, already taken at its step
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            running = {k: [float(v[0]), v[1]] for k, v in getattr(self.core, "running", {}).items()}
            loop = {
                "global_step": step,
                "log_history": self.state.log_history,
                "tr_loss": float(self.tr_loss),
                "last_logged": self.last_logged,
                "running": running,
            }
            (path / LOOP_STATE).write_text(json.dumps(loop))
        self._call("on_save")
        self.checkpoints.on_saved(step, self.max_steps)
