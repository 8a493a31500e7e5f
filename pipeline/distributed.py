"""Running a stage on several processes, GPUs or machines: torchrun launches, torch.distributed coordinates.

A stage whose params ask for `nproc` > 1 relaunches itself under torchrun (`torch.distributed.run --standalone`) when it
was started as a plain process, as `dvc repro` starts it. Multi-node runs start torchrun on every node themselves with
its rendezvous flags (README "Scale"): a stage already under torchrun never relaunches. Inside, `Ranks` is who this
process is; the process group is gloo on the CPU and NCCL on GPUs (`KD_DIST_BACKEND=gloo` forces gloo, e.g. to run
the CPU tests on a GPU machine), initialised once, and every collective the stages use (barrier, gather of small
Python objects) is torch.distributed's own.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.errors import ERROR_FILE_ENV, PipelineError

# Ranks wait at barriers for the slowest of them (a long extraction split): far longer than NCCL's 10-minute default.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: `rank` of `world` processes, `local_rank` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj):
        """Every rank's `obj` (small, picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def device(self, name: str) -> torch.device:
        """The device `name` (extract.device) means for this rank: one GPU per local rank under torchrun."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise PipelineError(f"params.yaml: the device is '{name}' but no CUDA device is visible; use 'auto' or 'cpu'")
        if name == "cuda" and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return torch.device(name)


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def ranks() -> Ranks:
    """This process's ranks, initialising the process group on first use under torchrun (one process: no group)."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Ranks()
    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and os.environ.get("KD_DIST_BACKEND", "") != "gloo"
        if gpu:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if gpu else "gloo", timeout=BARRIER_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


def relaunch_under_torchrun(nproc: int, argv: list[str] | None = None, key: str = "nproc") -> int | None:
    """With `nproc` > 1 and no torchrun around this process: run this script again under `torchrun --standalone
    --nproc-per-node nproc` and return its exit code (the caller exits with it). None: go on in this process. More
    processes than this machine has GPUs (or, without one, CPU cores) are refused, naming the params `key`."""
    if nproc <= 1 or under_torchrun():
        return None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    room, what = (gpus, f"{gpus} GPU(s)") if gpus else (os.cpu_count() or 1, f"{os.cpu_count() or 1} CPU cores and no GPU")
    if nproc > room:
        raise PipelineError(
            f"params.yaml: '{key}' is {nproc} but this machine has {what}; set it to at most {room} (one process per "
            "GPU), or start torchrun yourself across several machines (docs/operations.md)"
        )
    argv = sys.argv if argv is None else argv
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *argv]
    env = dict(os.environ)
    if not torch.cuda.is_available():  # CPU processes share the cores: torchrun's default of 1 thread each is right
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    with tempfile.TemporaryDirectory(prefix="kd-errors-") as tmp:
        errors = Path(tmp) / "error"
        env[ERROR_FILE_ENV] = str(errors)
        code = _run_forwarding_stderr(cmd, env, errors)
        if errors.is_file() and errors.read_text().strip():
            # a rank stopped on a user error: its one line, not torchrun's traceback of the failed child
            raise PipelineError(errors.read_text().strip().splitlines()[0])
    return code


def _run_forwarding_stderr(cmd: list[str], env: dict, errors: Path) -> int:
    """Run `cmd`, passing its stderr through line by line until a rank has written a user error to `errors`; what
    follows (torchrun's report of the failed child) is dropped."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    for line in proc.stderr:
        if not errors.is_file():
            sys.stderr.write(line)
            sys.stderr.flush()
    return proc.wait()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
