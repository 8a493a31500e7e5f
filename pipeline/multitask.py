"""Multi-task distillation: one student encoder with a head per task, trained from several task caches at once, with
no teacher in memory. Each batch comes from one task's cache and trains through that task's own loss (its Task facet,
its cached layers and projections, `pipeline.kd.DistillationModule`); the tasks' students share their embeddings and
encoder, so every step moves the one encoder. Each task's model is saved as a plain transformers checkpoint
(`<out>/<task>/`: the shared encoder and that task's head), so a task is served alone with its Auto class."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.batching import EpochLengthGroupedSampler
from pipeline.cache.schema import MANIFEST
from pipeline.checkpoints import Checkpoints, files_digest, train_work_dir, training_key
from pipeline.collate import CacheCollator, keep_freed_host_memory
from pipeline.config import DistillConfig
from pipeline.distill import prepare_run, save_student, seconds_spread
from pipeline.distributed import ranks
from pipeline.errors import PipelineError
from pipeline.models import PROVENANCE, SEEDS_DIR, tokenizer_fingerprint
from pipeline.scoring import count_parameters
from pipeline.specs import MultiTaskStudent
from pipeline.student_loop import StudentLoop

SUMMARY = "multitask.json"  # beside the task folders: tasks, weights, batches per task, the shared encoder's size


@dataclasses.dataclass
class TaskSource:
    """One task's cache and what its params file says the cache must match."""

    cache_dir: Path
    teacher_dir: Path | None
    max_length: int
    label_names: list[str] | None
    rank: int | None
    task_config: object = None


def task_shares(batches: dict[str, int], weights: dict[str, float], rule: str, temperature: float) -> dict[str, int]:
    """How many of an epoch's batches each task gives: the epoch has as many batches as the tasks' own epochs together,
    split by weight x batches (proportional), weight x batches^(1/T) (temperature) or weight alone (round_robin),
    rounded by largest remainder so the counts add up; every task gets at least one."""
    total = sum(batches.values())
    size = {"proportional": lambda n: n, "temperature": lambda n: n ** (1 / temperature), "round_robin": lambda n: 1.0}[rule]
    raw = {t: weights[t] * size(batches[t]) for t in weights}
    exact = {t: total * r / sum(raw.values()) for t, r in raw.items()}
    counts = {t: max(1, math.floor(v)) for t, v in exact.items()}
    for t in sorted(exact, key=lambda t: counts[t] - exact[t])[: max(0, total - sum(counts.values()))]:
        counts[t] += 1
    return counts


def task_order(counts: dict[str, int], rule: str, seed: int, epoch: int) -> list[str]:
    """The task of each batch of an epoch: a seeded shuffle (a function of seed and epoch), or for round_robin the
    tasks interleaved evenly (task t's k-th batch at (k + 1/2) / count_t of the epoch)."""
    if rule == "round_robin":
        slots = sorted(((k + 0.5) / c, i, t) for i, (t, c) in enumerate(counts.items()) for k in range(c))
        return [t for *_, t in slots]
    order = [t for t, c in counts.items() for _ in range(c)]
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


class TaskBatches(torch.utils.data.Sampler):
    """Training batches over the tasks' rows laid end to end (`TaskRows`): each batch is `batch_size` length-grouped
    rows of one task, the tasks mixed as `task_shares` and `task_order` say. A task's own batches run on from epoch
    to epoch, so a task drawn more often than its size starts its next pass instead of repeating one."""

    def __init__(
        self, lengths: dict[str, np.ndarray], batch_size: int, weights, rule: str, temperature: float, seed: int, world: int = 1
    ):
        # the rows per global batch; no `batch_size` attribute: Accelerate would take the parts for batches of that size
        self.rows, self.rule, self.seed, self.epoch, self.world = batch_size, rule, seed, 0, world
        self.samplers = {t: EpochLengthGroupedSampler(batch_size, [int(n) for n in v], seed) for t, v in lengths.items()}
        self.offsets = dict(zip(lengths, np.cumsum([0] + [len(v) for v in lengths.values()])[:-1].tolist()))
        self.own = {t: math.ceil(len(v) / batch_size) for t, v in lengths.items()}
        self.counts = task_shares(self.own, weights, rule, temperature)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts.values()) * self.world

    def _batches(self, task: str) -> list[list[int]]:
        """This epoch's batches of `task`: batches [e c, (e + 1) c) of its endless run of own passes."""
        count, own, sampler = self.counts[task], self.own[task], self.samplers[task]
        first, last = self.epoch * count, (self.epoch + 1) * count
        out = []
        for p in range(first // own, (last - 1) // own + 1):
            sampler.set_epoch(p)
            order = list(sampler)
            out += [order[i : i + self.rows] for i in range(0, len(order), self.rows)]
        start = first - (first // own) * own
        return [[self.offsets[task] + i for i in b] for b in out[start : start + count]]

    def __iter__(self):
        batches = {t: iter(self._batches(t)) for t in self.counts}
        for task in task_order(self.counts, self.rule, self.seed, self.epoch):
            yield from self._split(next(batches[task]))

    def _split(self, batch: list[int]) -> list[list[int]]:
        """Under DDP (`world` processes): a batch as `world` consecutive parts, which Accelerate deals out one per
        process, so every process trains on the same task in a step; a batch of fewer rows than processes repeats rows."""
        if self.world == 1:
            return [batch]
        rows = (batch * self.world)[: max(len(batch), self.world)]
        return [part.tolist() for part in np.array_split(np.array(rows), self.world)]


class TaskRows(torch.utils.data.Dataset):
    """The tasks' training rows end to end; a batch (all of one task, as `TaskBatches` draws them) reads as
    (task, rows)."""

    def __init__(self, splits: dict[str, object]):
        self.splits, self.names = splits, list(splits)
        self.ends = np.cumsum([len(s) for s in splits.values()])

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitems__(self, indices: list[int]):
        which = int(np.searchsorted(self.ends, indices[0], side="right"))
        start = int(self.ends[which - 1]) if which else 0
        return self.names[which], self.splits[self.names[which]].__getitems__([i - start for i in indices])


class TaskCollator:
    """(task, rows) -> that task's padded batch (its own `CacheCollator`), with the task's name for the module."""

    def __init__(self, collators: dict[str, CacheCollator]):
        self.collators = collators

    def __call__(self, item) -> dict:
        task, rows = item
        return {"task": task, **self.collators[task](rows)}


class MultiTaskModule(nn.Module):
    """Each task's `DistillationModule`, their students sharing the first one's embeddings and encoder (as built, or
    `encoder_init` average: every task's averaged into it); a batch goes to the module of its task. The loss parts
    are logged per task (`loss_<task>_<part>`)."""

    def __init__(self, modules: dict[str, nn.Module], encoder_init: str = "first"):
        super().__init__()
        self.tasks = nn.ModuleDict(modules)
        first = next(iter(modules.values()))
        shared = first.student.base_model
        if encoder_init == "average":
            average_encoders([m.student.base_model for m in modules.values()])
        for module in list(modules.values())[1:]:
            base = module.student.base_model
            base.embeddings, base.encoder = shared.embeddings, shared.encoder
        self.cfg, self.running = first.cfg, {}

    @property
    def temperature(self) -> float:
        return next(iter(self.tasks.values())).temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        for module in self.tasks.values():
            module.temperature = value

    def forward(self, task: str, **batch):
        module = self.tasks[task]
        out = module(**batch)
        for part, (total, count) in module.running.items():
            mine = self.running.setdefault(f"{task}_{part}", [0.0, 0])
            mine[0], mine[1] = mine[0] + total, mine[1] + count
        module.running.clear()
        return out


@torch.no_grad()
def average_encoders(bases: list[nn.Module]) -> None:
    """The first base model's embeddings and encoder become the mean of every base model's (same shapes: the
    tasks' students share one spec); for students built from their tasks' teachers, the teachers' layers averaged."""
    parts = [dict(nn.ModuleList([b.embeddings, b.encoder]).named_parameters()) for b in bases]
    for name, param in parts[0].items():
        param.copy_(torch.stack([p[name] for p in parts]).mean(0))


def _runs(sources: dict[str, TaskSource], spec: MultiTaskStudent, cfg: DistillConfig, seed: int) -> dict:
    """Each task's set-up (cache checked, student built, loss module), the tokenizers checked to be one."""
    runs = {
        t: prepare_run(
            s.cache_dir,
            spec,
            spec.task_distill(cfg, t),
            seed=seed,
            teacher_dir=s.teacher_dir,
            max_length=s.max_length,
            label_names=s.label_names,
            rank=s.rank,
            task_config=s.task_config,
        )  # fmt: skip
        for t, s in sources.items()
    }
    first, *others = runs
    for t in others:
        if tokenizer_fingerprint(runs[t].tokenizer) != tokenizer_fingerprint(runs[first].tokenizer):
            raise PipelineError(
                f"{sources[t].cache_dir}: task '{t}' was cached with another tokenizer than task '{first}' "
                f"({sources[first].cache_dir}); the tasks share one encoder, so give every task's params file the same "
                "teacher.model (tokenizer) and rerun its stages"
            )
    return runs


def distill_multitask(
    sources: dict[str, TaskSource], out_dir: Path, spec: MultiTaskStudent, cfg: DistillConfig, rule: str,
    temperature: float, *, seed: int, work: Path | None = None, callbacks=(),
) -> dict:  # fmt: skip
    """Train one multi-task student (tasks in `spec.tasks` order; init from the first task's teacher) and save a
    checkpoint per task under `out_dir/<task>/`. Returns a summary."""
    if cfg.batch_tokens is not None or cfg.quantization_aware:
        raise PipelineError(
            "params.yaml: a multi-task student batches batch_size rows of one task and trains in float; set its "
            "batch_tokens to null and quantization_aware to false"
        )
    start, who = time.perf_counter(), ranks()
    if cfg.batch_size % who.world:
        raise PipelineError(
            f"params.yaml: distill.batch_size {cfg.batch_size} is the global batch and must split evenly over "
            f"{who.world} processes (nproc); use a multiple of {who.world}"
        )
    keep_freed_host_memory()
    runs = _runs(sources, spec, cfg, seed)
    module = MultiTaskModule({t: r.module for t, r in runs.items()}, spec.encoder_init)
    collators = {
        t: CacheCollator(r.plan.hidden_layers, r.tokenizer.pad_token_id or 0, *r.plan.stored_relations, task=r.module.task)
        for t, r in runs.items()
    }
    lengths = {t: r.train.lengths() for t, r in runs.items()}
    batches = TaskBatches(lengths, cfg.batch_size, spec.tasks, rule, temperature, seed, world=who.world)
    checkpoints = None
    if work is not None:
        key = training_key(
            student=dataclasses.asdict(spec),
            distill={k: v for k, v in dataclasses.asdict(cfg).items() if k != "checkpoint_steps"},
            sampling=[rule, temperature],
            seed=seed,
            caches=files_digest([Path(s.cache_dir) / MANIFEST for s in sources.values()]),
        )
        checkpoints = Checkpoints(work, key, cfg.checkpoint_steps, f"student {Path(out_dir).name} (seed {seed})")
    train = TaskRows({t: r.train for t, r in runs.items()})
    loop = StudentLoop(
        module, train, TaskCollator(collators), [], cfg, seed, checkpoints=checkpoints, callbacks=callbacks,
        batches=batches, unused_parameters=len(runs) > 1,
    )  # fmt: skip
    history = loop.fit()
    if who.main:
        for t, r in runs.items():
            save_student(r.student, r.tokenizer, Path(out_dir) / t, sources[t].max_length, kept=work)
    who.barrier()
    encoder = runs[next(iter(runs))].student.base_model
    summary = {
        "seconds": round(time.perf_counter() - start, 1),
        "tasks": {
            t: {
                "task": r.task,
                "weight": spec.tasks[t],
                "batches_per_epoch": batches.counts[t],
                "own_batches_per_epoch": batches.own[t],
                **r.rows,
            }
            for t, r in runs.items()
        },  # fmt: skip
        "sampling": rule,
        "processes": who.world,
        "steps": loop.max_steps,
        "params": count_parameters(module),  # the shared encoder once, and every head
        "params_per_task": {t: count_parameters(r.student) for t, r in runs.items()},
        "shared_encoder_params": count_parameters(encoder.embeddings) + count_parameters(encoder.encoder),
        "init": runs[next(iter(runs))].init_info.get("init"),
        "encoder_init": spec.encoder_init,
        "task_overrides": spec.task_overrides,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "resumed_from_step": checkpoints.resumed_step if checkpoints is not None else None,
    }
    return {"summary": summary, "history": history}


def distill_multitask_seeds(sources: dict[str, TaskSource], out_dir: Path, spec, cfg, rule, temperature, *, seeds) -> dict:
    """Once per seed: the first seed's checkpoints are `out_dir/<task>/`, the others `out_dir/<task>/seeds/<seed>/`,
    the layout evaluate reads a single-task student's seeds from; each task folder records the seeds."""
    out_dir, who = Path(out_dir), ranks()
    work = train_work_dir(out_dir)
    runs = []
    for i, seed in enumerate(seeds):
        result = distill_multitask(
            sources, out_dir / ".seed", spec, cfg, rule, temperature, seed=seed, work=work / f"seed-{seed}"
        )
        for t in sources if who.main else ():  # rank 0 saved them
            target = out_dir / t if i == 0 else out_dir / t / SEEDS_DIR / str(seed)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            (out_dir / ".seed" / t).rename(target)
        runs.append((seed, result))
    who.barrier()
    primary = runs[0][1]
    seconds = [r["summary"]["seconds"] for _, r in runs]
    summary = dict(primary["summary"], seed=seeds[0], seeds=list(seeds), seed_seconds=seconds, **seconds_spread(seconds))
    if who.main:
        shutil.rmtree(out_dir / ".seed", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        for t in sources:
            (out_dir / t / PROVENANCE).write_text(json.dumps({"seed": seeds[0], "seeds": list(seeds)}, indent=2) + "\n")
        (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return {"summary": summary, "history": primary["history"]}
