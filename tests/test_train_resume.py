"""Stage two's training survives kill -9 and a full disk: teacher and student runs are killed at random points,
resumed from their checkpoints, and end with weights byte-identical to an uninterrupted run."""

import errno
import hashlib
import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import SafetensorError
from transformers import PreTrainedModel, TrainerCallback

from pipeline.checkpoints import COMPLETE, train_work_dir
from pipeline.config import DistillConfig, StudentSpec
from pipeline.data import save_prepared
from pipeline.distill import distill_seeds
from pipeline.errors import PipelineError

# Runs the teacher stage's library call (or a student's distill_seeds) in a fresh process. Once the Trainer reaches
# step N (absolute, so a resumed run still gets there) it arms a timer that SIGKILLs the process a few milliseconds
# later: mid-step, mid-checkpoint-write or between a checkpoint and its completion marker.
CHILD = r"""
import json, os, signal, sys, threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from pipeline.config import DistillConfig, StudentSpec, TeacherConfig
from pipeline.data import load_prepared
from pipeline.distill import distill_seeds
from pipeline.teacher import run_teacher

torch.set_num_threads(1)
role, source, out, kill_at, delay = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

class Kill(TrainerCallback):
    armed = False
    def on_step_end(self, args, state, control, **kwargs):
        if kill_at and state.global_step >= kill_at and not self.armed:
            self.armed = True
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

if role == "teacher":
    splits, info = load_prepared(Path(source))
    cfg = TeacherConfig(model=sys.argv[6], epochs=2, batch_size=8, learning_rate=5e-4, checkpoint_steps=4)
    history, summary = run_teacher(cfg, splits, info, 0, out, callbacks=[Kill()])
else:  # "student", or "student:<batch_tokens>" for token-budget batches
    tokens = int(role.split(":")[1]) if ":" in role else None
    cfg = DistillConfig(
        epochs=2, batch_size=8, batch_tokens=tokens, learning_rate=5e-4, checkpoint_steps=4, logging_steps=3
    )
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    summary = distill_seeds(Path(source), out, spec, cfg, seeds=[0], callbacks=[Kill()])["summary"]
print(json.dumps({"resumed_from_step": summary["resumed_from_step"], "dev": summary["eval_accuracy_per_epoch"]}))
"""


def _run(
    role: str, source: Path, out: Path, kill_at: int = 0, delay: float = 0.0, model: str = ""
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, role, str(source), str(out), str(kill_at), str(delay), model],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _weights(out: Path) -> str:
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def _kill_and_resume(role: str, source: Path, tmp_path: Path, total_steps: int, model: str = "", points: int = 12) -> None:
    reference = _run(role, source, tmp_path / "reference", model=model)
    assert reference.returncode == 0, reference.stderr[-3000:]
    want = json.loads(reference.stdout.strip().splitlines()[-1])
    assert want["resumed_from_step"] is None

    out, work = tmp_path / "run", train_work_dir(tmp_path / "run")
    rng = random.Random(20261123)
    points = sorted(rng.sample(range(2, total_steps - 1), points))
    killed, resumed = 0, 0
    for point in points:
        proc = _run(role, source, out, kill_at=point, delay=rng.uniform(0, 0.03), model=model)
        assert proc.returncode in (0, -9), proc.stderr[-3000:]
        resumed += "resuming from" in proc.stderr
        if proc.returncode == 0:  # the timer fired after the run had finished
            continue
        killed += 1
        assert not out.exists()  # no half-saved model under the output's name
        complete = [p for p in work.glob("checkpoint-*") if (p / COMPLETE).is_file()]
        assert len(complete) <= 1  # older checkpoints go only once a newer one is complete
    print(f"{role}: {killed} of {len(points)} runs killed, {resumed} resumed from a checkpoint")
    assert killed >= len(points) - 2, f"only {killed} of {len(points)} runs were killed"
    assert resumed >= killed - 1  # every run after the first kill started from a checkpoint

    final = _run(role, source, out, model=model)
    assert final.returncode == 0, final.stderr[-3000:]
    got = json.loads(final.stdout.strip().splitlines()[-1])
    assert got["resumed_from_step"] is not None and got["dev"] == want["dev"]
    assert _weights(out) == _weights(tmp_path / "reference")
    assert not work.exists()  # checkpoints are removed once the model is saved


@pytest.mark.slow
def test_teacher_killed_at_random_points_resumes_to_identical_weights(tmp_path, tiny_teacher, tiny_prepared):
    prepared = tmp_path / "prepared"  # as the prepare stage writes it, with the tokenizer the teacher checks
    save_prepared(prepared, *_with_fingerprint(tiny_prepared, tiny_teacher))
    steps = 2 * -(-len(tiny_prepared[0]["train"]) // 8)
    _kill_and_resume("teacher", prepared, tmp_path, steps, model=str(tiny_teacher))


@pytest.mark.slow
def test_student_killed_at_random_points_resumes_to_identical_weights(tmp_path, tiny_cache):
    from pipeline.cache import TeacherCache

    steps = 2 * -(-len(TeacherCache(tiny_cache).split("train", ["logits"])) // 8)
    _kill_and_resume("student", tiny_cache, tmp_path, steps)


@pytest.mark.slow
def test_student_on_token_budget_batches_killed_resumes_to_identical_weights(tmp_path, tiny_cache):
    """distill.batch_tokens: a resumed epoch skips the batches it trained, from the same (seed, epoch) cut."""
    from pipeline.batching import TokenBudgetBatchSampler
    from pipeline.cache import TeacherCache

    lengths = TeacherCache(tiny_cache).split("train", ["logits"]).lengths()
    steps = 2 * len(TokenBudgetBatchSampler(lengths, 160, 8, seed=0))
    _kill_and_resume("student:160", tiny_cache, tmp_path, steps, points=6)


class _CountSteps(TrainerCallback):
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def _fill_disk_on_final_save(monkeypatch, error):
    """The disk fills while the finished model is written (checkpoints during training still fit)."""
    real = PreTrainedModel.save_pretrained

    def save_pretrained(self, path, *args, **kwargs):
        if str(path).endswith(".saving"):
            (Path(path) / "model.safetensors").write_bytes(b"half a model")
            raise error
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"), "StorageFull"),
    ],
)
def test_full_disk_while_saving_a_student_loses_no_training(tmp_path, tiny_cache, monkeypatch, error, reason):
    cfg = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, checkpoint_steps=0)
    spec = StudentSpec(num_layers=1, hidden_size=16, num_heads=2, init="random")
    out, work = tmp_path / "students" / "s", train_work_dir(tmp_path / "students" / "s")
    _fill_disk_on_final_save(monkeypatch, error)
    with pytest.raises(
        PipelineError,
        match=rf"students/s: could not save the model \(.*{reason}.*\); the trained weights are kept in .*\.s\.train",
    ):
        distill_seeds(tiny_cache, out, spec, cfg, seeds=[0])
    assert not out.exists() and not (tmp_path / "students" / ".s.saving").exists()
    assert [p.name for p in (work / "seed-0").glob("checkpoint-*")]  # the finished training is still there
    monkeypatch.undo()
    counter = _CountSteps()
    summary = distill_seeds(tiny_cache, out, spec, cfg, seeds=[0], callbacks=[counter])["summary"]
    assert counter.steps == 0 and summary["resumed_from_step"] > 0  # saved again, nothing retrained
    reference = distill_seeds(tiny_cache, tmp_path / "reference", spec, cfg, seeds=[0])["summary"]
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "reference" / "model.safetensors").read_bytes()
    assert summary["eval_accuracy_per_epoch"] == reference["eval_accuracy_per_epoch"]
    assert not work.exists()


def test_full_disk_while_saving_the_teacher_loses_no_training(tmp_path, tiny_teacher, tiny_prepared, monkeypatch):
    from pipeline.config import TeacherConfig
    from pipeline.teacher import run_teacher

    splits, info = _with_fingerprint(tiny_prepared, tiny_teacher)
    cfg = TeacherConfig(model=str(tiny_teacher), epochs=1, batch_size=16, checkpoint_steps=7)
    out = tmp_path / "teacher"
    _fill_disk_on_final_save(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(
        PipelineError,
        match=r"teacher: could not save the model \(No space left on device\); .*kept in .*\.teacher\.train: free disk space and rerun",
    ):
        run_teacher(cfg, splits, info, 0, out)
    assert not out.exists()
    monkeypatch.undo()
    counter = _CountSteps()
    _, summary = run_teacher(cfg, splits, info, 0, out, callbacks=[counter])
    assert counter.steps == 0 and summary["resumed_from_step"] == -(-len(splits["train"]) // 16)
    assert (out / "model.safetensors").is_file() and not train_work_dir(out).exists()


def test_a_teacher_run_leaves_no_scratch_folder_behind(tmp_path, tiny_teacher, tiny_prepared, monkeypatch):
    """The Trainer's output_dir is scratch: removed after a finished run and after a failed one."""
    import tempfile

    from pipeline.config import TeacherConfig
    from pipeline.teacher import run_teacher

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    splits, info = _with_fingerprint(tiny_prepared, tiny_teacher)
    cfg = TeacherConfig(model=str(tiny_teacher), epochs=1, batch_size=16, checkpoint_steps=0)

    class Fail(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            assert list(scratch.glob("kd-trainer-*")), "the Trainer runs in a scratch folder under the temp dir"
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_teacher(cfg, splits, info, 0, tmp_path / "failed", callbacks=[Fail()])
    assert not list(scratch.glob("kd-trainer-*"))
    run_teacher(cfg, splits, info, 0, tmp_path / "teacher")
    assert not list(scratch.glob("kd-trainer-*")) and (tmp_path / "teacher" / "model.safetensors").is_file()


def test_checkpoints_of_other_params_are_discarded(tmp_path, tiny_cache, caplog):
    spec = StudentSpec(num_layers=1, hidden_size=16, num_heads=2, init="random")
    cfg = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, checkpoint_steps=3)
    out = tmp_path / "s"
    work = train_work_dir(out) / "seed-0"

    class Stop(TrainerCallback):  # a crash right after the first checkpoint
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill_seeds(tiny_cache, out, spec, cfg, seeds=[0], callbacks=[Stop()])
    assert [p.name for p in work.glob("checkpoint-*")] == ["checkpoint-3"]
    changed = DistillConfig(epochs=1, batch_size=16, learning_rate=1e-3, checkpoint_steps=3)
    caplog.set_level(logging.INFO)
    summary = distill_seeds(tiny_cache, out, spec, changed, seeds=[0])["summary"]
    assert summary["resumed_from_step"] is None and "made with other params or data" in caplog.text
    with pytest.raises(KeyboardInterrupt):  # checkpoint_steps alone does not change the key
        distill_seeds(tiny_cache, tmp_path / "t", spec, cfg, seeds=[0], callbacks=[Stop()])
    every_epoch = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, checkpoint_steps=0)
    assert distill_seeds(tiny_cache, tmp_path / "t", spec, every_epoch, seeds=[0])["summary"]["resumed_from_step"] == 3


def _with_fingerprint(prepared, teacher):
    from transformers import AutoTokenizer

    from pipeline.models import tokenizer_fingerprint

    splits, info = prepared
    return splits, dict(info, tokenizer_fingerprint=tokenizer_fingerprint(AutoTokenizer.from_pretrained(teacher)))


class _StopAt(TrainerCallback):
    """A crash (KeyboardInterrupt) as step `at` begins."""

    def __init__(self, at: int):
        self.at = at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop_at, resumed_at", [(9, 8), (39, 38), (45, 44)])
def test_a_resumed_student_logs_what_the_uninterrupted_run_logs(tiny_cache, tmp_path, stop_at, resumed_at):
    """Mid-epoch, just after an epoch end (38 steps an epoch) and in the second epoch: the resumed run skips the
    trained batches, restores the RNG where the first run had it, and carries the loss sums since the last log, so its
    log history and weights are the uninterrupted run's."""
    cfg = DistillConfig(epochs=2, batch_size=8, learning_rate=5e-4, checkpoint_steps=4, logging_steps=3)
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    reference = distill_seeds(tiny_cache, tmp_path / "reference", spec, cfg, seeds=[0])
    with pytest.raises(KeyboardInterrupt):
        distill_seeds(tiny_cache, tmp_path / "s", spec, cfg, seeds=[0], callbacks=[_StopAt(stop_at)])
    resumed = distill_seeds(tiny_cache, tmp_path / "s", spec, cfg, seeds=[0])
    assert resumed["summary"]["resumed_from_step"] == resumed_at

    def logged(result):  # every log and evaluation, less the wall times
        return [{k: v for k, v in h.items() if "runtime" not in k} for h in result["history"] if "train_runtime" not in h]

    assert logged(resumed) == logged(reference)
    assert _weights(tmp_path / "s") == _weights(tmp_path / "reference")
