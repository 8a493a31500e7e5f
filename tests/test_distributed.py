"""Extraction and students under torchrun, on the CPU with gloo: 2 processes, two "nodes" on localhost, kill -9 of one
rank then resume. A cache written by any number of processes is the one-process cache."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache import TeacherCache
from pipeline.data import save_prepared
from pipeline.extract_loop import length_sorted_batches, rank_batches
from pipeline.journal import owner, work_dir_for

# Runs extract_cache in each process torchrun starts (or alone); rank `kill_rank` SIGKILLs itself after its
# `kill_after`-th batch. Rank 0 prints the per-split count of batches resumed from a journal.
EXTRACT = r"""
import json, os, signal, sys
from pathlib import Path

from pipeline.config import ExtractConfig
from pipeline.data import load_prepared
from pipeline.extract import extract_cache

prepared, teacher, out, shard_bytes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
kill_rank, kill_after = int(sys.argv[5]), int(sys.argv[6])
batch_size = int(sys.argv[7]) if len(sys.argv) > 7 else 8
hidden_rank = int(sys.argv[8]) if len(sys.argv) > 8 else 0  # extract.rank (0: full width)
splits, info = load_prepared(Path(prepared))
rank, seen = int(os.environ.get("RANK", 0)), []

def on_batch(split, index):
    seen.append(index)
    if rank == kill_rank and len(seen) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

cfg = ExtractConfig(
    layers=[1, 4], dtype="float16", batch_size=batch_size, shard_max_mb=shard_bytes / (1 << 20), device="cpu",
    rank=hidden_rank or None, rank_sample_rows=100,
)
result = extract_cache(Path(teacher), splits, Path(out), cfg, info=info, on_batch=on_batch if kill_after else None)
if result is not None:
    print(json.dumps({k: v["resumed_batches"] for k, v in result["stats"].items()}))
"""

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in every process: bit-equal outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(
    script: Path,
    prepared: Path,
    teacher: Path,
    out: Path,
    shard_bytes: int,
    kill_rank: int,
    kill_after: int,
    batch_size: int = 8,
    hidden_rank: int = 0,
):
    return [
        str(script),
        str(prepared),
        str(teacher),
        str(out),
        str(shard_bytes),
        str(kill_rank),
        str(kill_after),
        str(batch_size),
        str(hidden_rank),
    ]


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ONE_THREAD)


def _torchrun(nproc: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]


def _rows(cache_dir: Path) -> dict[str, list[dict]]:
    cache = TeacherCache(cache_dir, verify="full")
    return {name: [cache.split(name)[i] for i in range(len(cache.split(name)))] for name in cache.splits}


def _assert_same_rows(a: Path, b: Path) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert list(rows_a) == list(rows_b)
    for split in rows_a:
        assert [r["example_id"] for r in rows_a[split]] == [r["example_id"] for r in rows_b[split]]
        for x, y in zip(rows_a[split], rows_b[split]):
            assert x.keys() == y.keys()
            for key in x:
                assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), (split, x["example_id"], key)


@pytest.fixture
def job(tmp_path, tiny_teacher, tiny_prepared):
    prepared = tmp_path / "prepared"
    save_prepared(prepared, *tiny_prepared)
    script = tmp_path / "extract_job.py"
    script.write_text(EXTRACT)
    return script, prepared, tiny_teacher


def test_rank_batches_are_contiguous_balanced_and_cover_every_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, 1000)
    batches = length_sorted_batches(lengths, 16)
    for world in (1, 2, 3, 8):
        parts = [rank_batches(batches, lengths, r, world) for r in range(world)]
        assert [b for part in parts for b in part] == list(range(len(batches)))  # in order, each batch once
        cost = [sum(len(batches[b]) * lengths[batches[b]].max() for b in part) for part in parts]
        assert max(cost) - min(cost) <= 2 * 16 * 64  # within a batch or two of equal padded tokens
        assert parts == [rank_batches(batches, lengths, r, world) for r in range(world)]  # deterministic


def test_two_process_extraction_equals_one_process_byte_for_byte(tmp_path, job):
    """Shards of one batch each: the 2-process cache (rows, shards, manifest) is the 1-process cache, file for file."""
    script, prepared, teacher = job
    one = _run([sys.executable, *_args(script, prepared, teacher, tmp_path / "one", 1, -1, 0)])
    assert one.returncode == 0, one.stderr[-12000:]
    two = _run(_torchrun(2, *_args(script, prepared, teacher, tmp_path / "two", 1, -1, 0)))
    assert two.returncode == 0, two.stderr[-12000:]
    a, b = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(a) == sorted(b) and a == b
    assert not work_dir_for(tmp_path / "two").exists()


@pytest.mark.parametrize("hidden_rank, shard_bytes", [(0, 60_000), (8, 20_000)], ids=["full-width", "low-rank"])
def test_two_process_extraction_killed_on_one_rank_resumes_to_the_one_process_rows(tmp_path, job, hidden_rank, shard_bytes):
    """Shards of a few batches each: ranks cut where one process closes a shard. Low rank (smaller rows, so smaller
    shards): rank 0 fits the basis and hands it to rank 1, and the resumed run fits the same one again."""
    script, prepared, teacher = job
    one = _run([sys.executable, *_args(script, prepared, teacher, tmp_path / "one", shard_bytes, -1, 0, 8, hidden_rank)])
    assert one.returncode == 0, one.stderr[-12000:]
    out = tmp_path / "two"
    killed = _run(_torchrun(2, *_args(script, prepared, teacher, out, shard_bytes, 1, 9, 8, hidden_rank)))
    assert killed.returncode != 0 and not out.exists()
    work = work_dir_for(out)
    journals = sorted(p.name for p in work.glob("journal-r*.json"))
    assert journals, "no rank journaled a shard before the kill"
    assert {owner(p.name) for p in work.glob("*.arrow") if not p.name.startswith("table-")} <= {0, 1}  # (rank 0's basis)
    resumed = _run(_torchrun(2, *_args(script, prepared, teacher, out, shard_bytes, -1, 0, 8, hidden_rank)))
    assert resumed.returncode == 0, resumed.stderr[-12000:]
    assert sum(json.loads(resumed.stdout.strip().splitlines()[-1]).values()) > 0  # journaled shards were kept
    _assert_same_rows(tmp_path / "one", out)
    assert _files(tmp_path / "one") == _files(out)  # killed and resumed, still the one-process cache byte for byte
    manifest = json.loads((out / "manifest.json").read_text())
    names = [s["file"] for split in manifest["splits"].values() for s in split["shards"]]
    assert all(owner(n) is None for n in names) and names == sorted(names, key=lambda n: (n.split("-")[0] != "train", n))
    assert not work.exists()
    assert manifest.get("rank") == (hidden_rank or None) and ("tables" in manifest) == bool(hidden_rank)


def _conll_prepared(root: Path) -> tuple[Path, Path]:
    """CoNLL-format sample sentences prepared for a tiny random token classifier: (prepared dir, teacher dir)."""
    import torch
    from transformers import BertForTokenClassification

    from pipeline.config import DataConfig
    from pipeline.tasks.data import task_data
    from pipeline.tasks.heads import head_of
    from tests.conftest import ROOT, SAMPLES, make_tokenizer, tiny_bert_config

    tokenizer = make_tokenizer(root / "teacher", ROOT / "data/raw/sst2")
    conll = SAMPLES / "conll2003"
    data = DataConfig(train=str(conll / "train.txt"), dev=str(conll / "dev.txt"), label_names=None, transfer=None)
    data.max_length, data.val_examples = 32, 0
    splits, info = task_data("token_classification").prepare(data, tokenizer, seed=0)
    torch.manual_seed(0)
    model = BertForTokenClassification(
        tiny_bert_config(len(tokenizer), **head_of("token_classification").head_config(info["label_names"]))
    )
    model.config.architectures = ["BertForTokenClassification"]
    model.save_pretrained(root / "teacher")
    save_prepared(root / "prepared", splits, info)
    return root / "prepared", root / "teacher"


@pytest.mark.parametrize("task, batch_size", [("sst2", 16), ("sst2", 64), ("conll2003", 16), ("conll2003", 64)])
def test_two_processes_write_the_one_process_cache_whatever_the_shard_and_batch_size(tmp_path, job, task, batch_size):
    """Shards of a few batches each, so splits span several and a rank's cut would fall inside one: still file for
    file the one-process cache (ranks are cut where one process closes a shard)."""
    script, prepared, teacher = job
    if task == "conll2003":
        prepared, teacher = _conll_prepared(tmp_path / "conll")
    shard_bytes = 3_000 * batch_size  # about three batches
    one = _run([sys.executable, *_args(script, prepared, teacher, tmp_path / "one", shard_bytes, -1, 0, batch_size)])
    assert one.returncode == 0, one.stderr[-12000:]
    two = _run(_torchrun(2, *_args(script, prepared, teacher, tmp_path / "two", shard_bytes, -1, 0, batch_size)))
    assert two.returncode == 0, two.stderr[-12000:]
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    train = manifest["splits"]["train"]  # several shards, and shards of several batches
    assert 2 <= len(train["shards"]) < -(-train["rows"] // batch_size)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_two_nodes_on_localhost_write_the_one_process_cache(tmp_path, job):
    """torchrun's multi-node launch (static rendezvous, as the README documents) with one process per "node"."""
    script, prepared, teacher = job
    one = _run([sys.executable, *_args(script, prepared, teacher, tmp_path / "one", 1, -1, 0)])
    assert one.returncode == 0, one.stderr[-12000:]
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={node}",
                "--nproc-per-node=1",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                *_args(script, prepared, teacher, tmp_path / "nodes", 1, -1, 0),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ONE_THREAD,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    _assert_same_rows(tmp_path / "one", tmp_path / "nodes")
    assert json.loads((tmp_path / "one" / "manifest.json").read_text()) == json.loads(
        (tmp_path / "nodes" / "manifest.json").read_text()
    )


# Trains one student from a cache with distill_seeds (checkpoints at each epoch end) in each process torchrun starts
# (or alone); rank 0 prints the summary and the optimizer steps taken.
DISTILL = r"""
import json, sys
from pathlib import Path

from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_seeds
from pipeline.distributed import ranks

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
batch_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else None
spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
cfg = DistillConfig(
    epochs=2, batch_size=16, batch_tokens=batch_tokens, learning_rate=5e-4, logging_steps=2, checkpoint_steps=5
)
result = distill_seeds(cache, out, spec, cfg, seeds=[0])
if ranks().main:
    steps = max(h["step"] for h in result["history"])
    print(json.dumps({"summary": result["summary"], "steps": steps}))
"""


def test_two_process_ddp_student_trains_like_one_process_and_saves_one_checkpoint(tmp_path, tiny_cache):
    script = tmp_path / "distill_job.py"
    script.write_text(DISTILL)
    one = _run([sys.executable, str(script), str(tiny_cache), str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-12000:]
    two = _run(_torchrun(2, str(script), str(tiny_cache), str(tmp_path / "two")))
    assert two.returncode == 0, two.stderr[-12000:]
    single, ddp = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (one, two))
    assert single["summary"]["processes"] == 1 and ddp["summary"]["processes"] == 2
    assert ddp["steps"] == single["steps"]  # batch_size is the global batch: the same optimizer steps
    for run in ("one", "two"):  # one saved model, its checkpoints gone
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
        assert (tmp_path / run / "model.safetensors").is_file()
    assert not list(tmp_path.glob("**/checkpoint-*"))
    evals = lambda r: r["summary"]["eval_accuracy_per_epoch"]  # noqa: E731
    assert len(evals(ddp)) == 2 and all(0 <= a <= 1 for a in evals(ddp))


def test_two_process_ddp_student_on_token_budget_batches_deals_them_out_in_turn(tmp_path, tiny_cache):
    """distill.batch_tokens under DDP: each process cuts batches of batch_tokens / 2 tokens and batch_size / 2 rows, and
    Accelerate hands them to the processes in turn, so an optimizer step takes two of them."""
    from pipeline.batching import TokenBudgetBatchSampler
    from pipeline.cache import TeacherCache

    script = tmp_path / "distill_job.py"
    script.write_text(DISTILL)
    two = _run(_torchrun(2, str(script), str(tiny_cache), str(tmp_path / "two"), "192"))
    assert two.returncode == 0, two.stderr[-12000:]
    ddp = json.loads(two.stdout.strip().splitlines()[-1])
    lengths = TeacherCache(tiny_cache).split("train", ["logits"]).lengths()
    per_process = len(TokenBudgetBatchSampler(lengths, 96, 8, seed=0))
    assert ddp["steps"] == 2 * -(-per_process // 2) != 2 * -(-len(lengths) // 16)  # not the batch_size-row count
    assert len(ddp["summary"]["eval_accuracy_per_epoch"]) == 2 and (tmp_path / "two" / "model.safetensors").is_file()


def test_ddp_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, tiny_cache, monkeypatch):
    from pipeline.config import DistillConfig, StudentSpec
    from pipeline.distill import distill_student
    from pipeline.distributed import Ranks
    from pipeline.errors import PipelineError

    monkeypatch.setattr("pipeline.distill.ranks", lambda: Ranks(0, 3, 0))
    with pytest.raises(PipelineError, match="distill.batch_size 16 is the global batch .* multiple of 3"):
        distill_student(tiny_cache, tmp_path / "s", StudentSpec(2, 16, num_heads=2), DistillConfig(batch_size=16), seed=0)


def test_stages_relaunch_under_torchrun_when_params_ask_for_processes(tmp_path, tiny_teacher, tiny_prepared):
    """`python stages/extract.py` and `stages/distill.py`, as dvc runs them, with extract.nproc and distill.nproc 2."""
    import yaml

    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["max_length"] = 32
    params["data"]["label_names"] = ["negative", "positive"]
    params["extract"].update(layers=[1, 4], batch_size=8, nproc=2, rank=16)  # the tiny teacher is 32 wide
    params["students"] = {"tiny": {"num_layers": 2, "hidden_size": 16, "num_heads": 2, "init": "random"}}
    params["ensembles"] = {}
    params["distill"].update(batch_size=16, epochs=1, nproc=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = tmp_path / "prepared"
    save_prepared(prepared, *tiny_prepared)

    def stage(name: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(ROOT / "stages" / f"{name}.py"), "--params", str(tmp_path / "params.yaml"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=ONE_THREAD)

    extract = stage(
        "extract",
        *("--prepared", str(prepared), "--transfer", str(tmp_path / "none"), "--teacher", str(tiny_teacher)),
        *("--out", str(tmp_path / "cache"), "--metrics", str(tmp_path / "extract.json")),
    )
    assert extract.returncode == 0, extract.stderr[-12000:]
    report = json.loads((tmp_path / "extract.json").read_text())
    assert [len(s["seconds_per_rank"]) for s in report["splits"].values()] == [2, 2]
    assert sum(s["rows"] for s in report["splits"].values()) == sum(len(s) for s in tiny_prepared[0].values())
    distill = stage(
        "distill",
        *("--student", "tiny", "--cache", str(tmp_path / "cache"), "--teacher", str(tiny_teacher)),
        *("--out-root", str(tmp_path / "students"), "--metrics-root", str(tmp_path / "metrics")),
        *("--plots-root", str(tmp_path / "plots")),
    )
    assert distill.returncode == 0, distill.stderr[-12000:]
    summary = json.loads((tmp_path / "metrics" / "train_tiny.json").read_text())
    assert summary["processes"] == 2 and (tmp_path / "students" / "tiny" / "model.safetensors").is_file()


def test_a_user_error_under_torchrun_is_one_line_and_exit_2(tmp_path, tiny_teacher, tiny_prepared):
    """extract.nproc 2: each rank stops on a user error (prepared with another max_length); the launching stage prints
    that one line, not torchrun's traceback of the failed child, and exits 2 as a one-process stage would."""
    import yaml

    from tests.conftest import ROOT

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["max_length"] = 48  # tiny_prepared was prepared with 32
    params["extract"].update(layers=[1], batch_size=8, nproc=2, rank=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    save_prepared(tmp_path / "prepared", *tiny_prepared)
    cmd = [sys.executable, str(ROOT / "stages/extract.py"), "--params", str(tmp_path / "params.yaml")]
    cmd += ["--prepared", str(tmp_path / "prepared"), "--transfer", str(tmp_path / "none"), "--teacher", str(tiny_teacher)]
    cmd += ["--out", str(tmp_path / "cache"), "--metrics", str(tmp_path / "extract.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=ONE_THREAD)
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: ") and "prepared with max_length 32 but data.max_length is 48" in errors[-1]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
