"""The whole pipeline's wall time: `dvc repro` of the default pipeline in a fresh clone, stage by stage.

    python bench/pipeline_wall.py [--dir bench/work/pipeline] [-S key=value ...] [--name cpu]

Clones the committed project into `--dir` (a fresh clone: no DVC cache, no outputs), applies `-S` overrides to its
params.yaml (e.g. `-S data.max_train_examples=null` for full SST-2 on a GPU), then runs `dvc repro -s <stage>` for every
stage in dvc.yaml order and times each call. Per stage:

- `wall_s`: the whole `dvc repro -s` call: DVC's start-up and checks, the command, then DVC hashing the outputs and
  linking them into its cache (what a user waits for);
- `command_s`: the stage command alone, as it reports itself (`<stage>: done in X s`, after its imports);
- `dvc_and_imports_s`: the difference: DVC's own hashing/caching and start-up plus Python imports;
- `out_bytes`: the size of the stage's cached outputs.

Then a no-op `dvc repro` (everything up to date) and `dvc status` are timed: what checking the graph costs. The
accuracies are read from the clone's metrics, so the run also shows the default figures are unchanged. Results:
bench/results/pipeline_wall_<name>.json, written after every stage (`complete: false` until the end), so a run stopped
by a time limit still leaves the stages it finished.

Where the project is a copy without `.git` (the lent GPU machine), the copy is made a git repository of its own (or a
DVC project without SCM where git is absent), and DVC runs as `python -m dvc` when no `dvc` command is on PATH.
`--random-teacher` starts the teacher from a MiniLM-shaped random model with the tokenizer in $KD_TOKENIZER (machines
without the MiniLM package): the stages' times hold, their accuracies mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from common import ROOT, WORK, machine, random_teacher, save


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def set_param(params: dict, key: str, value: str) -> None:
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = yaml.safe_load(value)


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def copy_project(dest: Path) -> None:
    """A fresh clone of the committed project; where ROOT is a copy without `.git`, a copy of its files without
    outputs, made a repository (or a DVC project without SCM when git is absent)."""
    if (ROOT / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True)
        return
    skip = {".git", ".gpu", ".venv", "artifacts", "bench/work", "data/prepared", "data/transfer", ".dvc/cache", ".dvc/tmp"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        relative = Path(folder).relative_to(ROOT)
        return [n for n in names if n == "__pycache__" or (relative / n).as_posix() in skip]

    shutil.copytree(ROOT, dest, ignore=ignore)
    if shutil.which("git"):
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
            subprocess.run([*git, *cmd], cwd=dest, check=True)
    else:
        with open(dest / ".dvc" / "config", "a") as config:
            config.write("[core]\n    no_scm = true\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=WORK / "pipeline")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="params.yaml override key=value")
    parser.add_argument("--name", default="cpu")
    parser.add_argument("--random-teacher", action="store_true", help="random MiniLM-shaped teacher ($KD_TOKENIZER)")
    args = parser.parse_args()
    if args.random_teacher:
        args.overrides.append(f"teacher.model={random_teacher('minilm', Path(os.environ['KD_TOKENIZER'])).resolve()}")

    if args.dir.exists():
        shutil.rmtree(args.dir)
    copy_project(args.dir)
    if args.overrides:
        params_path = args.dir / "params.yaml"
        params = yaml.safe_load(params_path.read_text())
        for item in args.overrides:
            key, value = item.split("=", 1)
            set_param(params, key, value)
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    env_python = os.path.dirname(sys.executable)
    dvc = [os.path.join(env_python, "dvc")] if os.path.exists(os.path.join(env_python, "dvc")) else ["dvc"]
    if not shutil.which(dvc[0]):
        dvc = [sys.executable, "-m", "dvc"]
    result = {"machine": machine(), "overrides": args.overrides, "random_teacher": args.random_teacher, "complete": False}

    _, listing = run([*dvc, "stage", "list", "--name-only"], args.dir)
    stages = [line.strip() for line in listing.splitlines() if line.strip()]
    lock_outs: dict[str, list[str]] = {}
    rows = []
    total_started = time.perf_counter()
    for stage in stages:
        wall, log = run([*dvc, "repro", "-s", stage], args.dir)
        match = re.findall(r"^\S+: done in ([0-9.]+) s", log, flags=re.M)
        command = float(match[-1]) if match else None
        lock = yaml.safe_load((args.dir / "dvc.lock").read_text())["stages"].get(stage, {})
        lock_outs[stage] = [o["path"] for o in lock.get("outs", [])]
        row = {
            "stage": stage,
            "wall_s": round(wall, 1),
            "command_s": command,
            "dvc_and_imports_s": round(wall - command, 1) if command is not None else None,
            "out_bytes": sum(tree_bytes(args.dir / p) for p in lock_outs[stage]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(f"pipeline_wall_{args.name}", {**result, "stages": rows}, quiet=True)
    total = time.perf_counter() - total_started
    noop, _ = run([*dvc, "repro"], args.dir)
    status, status_out = run([*dvc, "status"], args.dir)
    metrics = {}
    for path in sorted((args.dir / "artifacts" / "metrics").glob("*.json")):
        data = json.loads(path.read_text())
        if "accuracy" in data:
            metrics[path.stem] = data["accuracy"]
    result.update(
        {
            "complete": True,
            "stages": rows,
            "total_s": round(total, 1),
            "noop_repro_s": round(noop, 1),
            "status_s": round(status, 1),
            "status_clean": "up to date" in status_out,
            "dev_accuracy": metrics,
        }
    )
    out = save(f"pipeline_wall_{args.name}", result)
    print(f"total {total:.0f} s; no-op repro {noop:.1f} s; status {status:.1f} s -> {out}")


if __name__ == "__main__":
    main()
