"""Resumable training and atomic saves for the teacher and student stages.

A training run keeps its checkpoints (weights, optimizer, scheduler, RNG states, log history: the teacher's Trainer's,
a student loop's Accelerate state) in a work dir
beside the stage's output — outside it, as extraction's `.cache.partial` is, because `dvc repro` deletes a stage's
outputs before running it. A checkpoint counts only once it carries the `complete.json` marker, written after
everything else in it is on disk; older checkpoints are removed only then, so a kill at any moment leaves one
complete checkpoint to resume from. The work dir records a key of everything that decides the trained weights, and a
work dir made under another key is discarded, as extraction's journal is.

The finished model is saved to a temporary dir and renamed into place, so the output is either the whole model or
absent. A failed save (a full disk) is one error that leaves the checkpoints: the rerun resumes at the last step and
only saves again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import TrainerCallback

from pipeline.cache.schema import write_json_atomic
from pipeline.distributed import ranks
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

KEY_FILE = "key.json"
COMPLETE = "complete.json"
EXTRA_STATE = "extra_state.pt"
PREFIX = "checkpoint-"


def train_work_dir(out_dir: Path) -> Path:
    """Where the checkpoints of a training run for `out_dir` live until its model is saved."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.train"


def training_key(**parts) -> str:
    """sha256 of everything that decides a run's weights (config, seed, data digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def files_digest(paths) -> str:
    """sha256 over the contents of `paths` in order: what a run's input data is, for its key."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _step(path: Path) -> int:
    return int(path.name.removeprefix(PREFIX))


def _unloadable(checkpoint: Path) -> str | None:
    """What keeps a checkpoint's files from loading as plain tensors (weights_only with the Trainer's numpy allowlist,
    safetensors), or None."""
    from safetensors import safe_open
    from transformers.trainer_pt_utils import safe_globals

    for path in sorted(checkpoint.rglob("*")):
        try:
            if path.suffix in (".pt", ".pth", ".pkl") or (path.suffix == ".bin" and path.name != "training_args.bin"):
                # what resuming loads: the Trainer's and Accelerate's states (training_args.bin is never loaded)
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True)
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
        except Exception as exc:  # an unpicklable, truncated or hostile file: any failure means "do not resume it"
            return f"{path.name}: {type(exc).__name__}"
    return None


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


class Checkpoints:
    """The checkpoints of one training run in `work`, every `every` steps (0: epoch ends only) and at each epoch end.

    `extra_state` = (get, set) carries state the Trainer does not save (a collator's own generator) with each checkpoint.
    """

    def __init__(
        self,
        work: Path,
        key: str,
        every: int,
        name: str = "training",
        extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
    ):
        self.work, self.key, self.every, self.name, self.extra_state = Path(work), key, every, name, extra_state
        self.resumed_step: int | None = None

    def latest(self) -> str | None:
        """Prepare the work dir and return the checkpoint to resume from (None: start afresh). A work dir of another key
        and every incomplete or superseded checkpoint are removed first."""
        who = ranks()
        if who.main:
            self._prepare()
            self._set_aside_damaged()
        who.barrier()  # under torchrun every rank resumes from what rank 0 left in place
        complete = sorted((p for p in self.work.glob(f"{PREFIX}*") if (p / COMPLETE).is_file()), key=_step)
        if not complete:
            return None
        latest = complete[-1]
        marker = json.loads((latest / COMPLETE).read_text())
        if self.extra_state is not None and (latest / EXTRA_STATE).is_file():
            self.extra_state[1](torch.load(latest / EXTRA_STATE, weights_only=True))
        self.resumed_step = marker["step"]
        log.warning(
            "%s: resuming from %s (step %d of %d), saved by an interrupted run",
            self.name,
            latest,
            marker["step"],
            marker["max_steps"],
        )
        return str(latest)

    def _set_aside_damaged(self) -> None:
        """A complete checkpoint whose files do not load as plain tensors (a pickle with code in it, a torn file) is
        renamed out of the way with one line saying so; training then starts from the last good one (or afresh)."""
        for path in sorted((p for p in self.work.glob(f"{PREFIX}*") if (p / COMPLETE).is_file()), key=_step, reverse=True):
            problem = _unloadable(path)
            if problem is None:
                return
            aside = path.with_name(f"damaged-{path.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(path, aside)
            log.warning("%s: %s cannot be resumed (%s); set aside as %s, training restarts", self.name, path, problem, aside)

    def _prepare(self) -> None:
        key_file = self.work / KEY_FILE
        if self.work.exists():
            saved = json.loads(key_file.read_text()).get("key") if key_file.is_file() else None
            if saved != self.key:  # (the Trainer may have made the dir before any key was written: nothing to say)
                if any(self.work.glob(f"{PREFIX}*")):
                    log.info("%s: discarding checkpoints in %s, made with other params or data", self.name, self.work)
                shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if not key_file.is_file():
            write_json_atomic(key_file, {"key": self.key})
        complete = sorted((p for p in self.work.glob(f"{PREFIX}*") if (p / COMPLETE).is_file()), key=_step)
        for path in self.work.glob(f"{PREFIX}*"):
            if not complete or path != complete[-1]:
                shutil.rmtree(path)

    def callback(self) -> TrainerCallback:
        return _CheckpointCallback(self)

    def on_saved(self, step: int, max_steps: int) -> None:
        """The loop has written checkpoint-`step`: add the extra state, make it durable, mark it complete, and only
        then drop the older ones."""
        who = ranks()
        who.barrier()  # under torchrun: every rank has written its part (its RNG state) of the checkpoint
        if not who.main:
            who.barrier()
            return
        path = self.work / f"{PREFIX}{step}"
        if self.extra_state is not None:
            torch.save(self.extra_state[0](), path / EXTRA_STATE)
        _fsync_tree(path)
        write_json_atomic(path / COMPLETE, {"step": step, "max_steps": max_steps})
        for old in self.work.glob(f"{PREFIX}*"):
            if old != path:
                shutil.rmtree(old)
        who.barrier()

    def remove(self) -> None:
        """Once the output is saved the checkpoints are no longer needed."""
        shutil.rmtree(self.work, ignore_errors=True)


class _CheckpointCallback(TrainerCallback):
    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True  # besides every `save_steps`: an epoch's work is never lost

    def on_save(self, args, state, control, **kwargs):
        self.checkpoints.on_saved(state.global_step, state.max_steps)


def save_atomically(out_dir: Path, write: Callable[[Path], None], kept: Path | None = None) -> None:
    """Run `write(tmp)` into a temporary dir beside `out_dir`, then rename it into place: `out_dir` is either the whole
    model or absent. An OSError or SafetensorError (a full disk) becomes one line naming what was kept."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.saving"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        _fsync_tree(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise PipelineError(f"{out_dir.parent}: {reason}; make the folder writable for this user and rerun") from None
        then = (
            f"the trained weights are kept in {kept}: free disk space and rerun, which resumes there and only saves again"
            if kept is not None
            else "free disk space and rerun"
        )
        raise PipelineError(f"{out_dir}: could not save the model ({reason}); {then}") from None
