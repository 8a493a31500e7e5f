"""kill -9 during extraction, many times, then finish: the cache is byte-identical to an uninterrupted run."""

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from pipeline.data import save_prepared
from pipeline.journal import work_dir_for

# Runs extract_cache in a fresh process; when the batch at absolute position N (train batches first, then dev) finishes,
# it arms a timer that SIGKILLs the process a few milliseconds later, so the kill lands anywhere: mid-forward,
# mid-shard-write, between rename and journal update. Positions are absolute so a resumed run still reaches them.
CHILD = r"""
import json, os, signal, sys, threading
from pathlib import Path

import pytest
import torch
from pipeline.data import load_prepared
from pipeline.config import ExtractConfig
from pipeline.extract import extract_cache

torch.set_num_threads(1)
prepared, teacher, out, kill_after, delay = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
device = sys.argv[6]
splits, info = load_prepared(Path(prepared))
train_batches = (len(splits["train"]) + 7) // 8

def on_batch(split, index):
    position = index + 1 + (train_batches if split == "dev" else 0)
    if position == kill_after:
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

cfg = ExtractConfig(layers=[1, 2, 4], dtype="float16", rank=None, batch_size=8, shard_max_mb=20_000 / (1 << 20), device=device)
result = extract_cache(Path(teacher), splits, Path(out), cfg, info=info, on_batch=on_batch if kill_after else None)
print(json.dumps({k: v["resumed_batches"] for k, v in result["stats"].items()}))
"""


def _extract(
    prepared: Path, teacher: Path, out: Path, kill_after: int = 0, delay: float = 0.0, device: str = "cpu"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(prepared), str(teacher), str(out), str(kill_after), str(delay), device],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _digest(cache: Path) -> dict[str, str]:
    return {
        str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.rglob("*")) if p.is_file()
    }


def test_kill_minus_nine_at_random_points_then_resume_is_byte_identical(tmp_path, tiny_teacher, tiny_prepared):
    prepared = tmp_path / "prepared"
    save_prepared(prepared, *tiny_prepared)
    reference = _extract(prepared, tiny_teacher, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    want = _digest(tmp_path / "reference")
    manifest = json.loads((tmp_path / "reference" / "manifest.json").read_text())
    total_batches = (len(tiny_prepared[0]["train"]) + 7) // 8 + (len(tiny_prepared[0]["dev"]) + 7) // 8
    assert sum(len(s["shards"]) for s in manifest["splits"].values()) >= 10  # many shard boundaries to die around

    out = tmp_path / "cache"
    rng = random.Random(1234)
    points = sorted(rng.sample(range(1, total_batches), 13))
    killed = 0
    for point in points:
        proc = _extract(prepared, tiny_teacher, out, kill_after=point, delay=rng.uniform(0, 0.02))
        assert proc.returncode in (0, -9), proc.stderr[-2000:]
        if proc.returncode == -9:
            killed += 1
            assert not out.exists()  # nothing half-done is ever visible under the cache's name
            work = work_dir_for(out)
            assert not (work / "manifest.json").exists()
            journal = json.loads((work / "journal.json").read_text()) if (work / "journal.json").exists() else {"splits": {}}
            for entry in journal["splits"].values():  # the journal lists only shards that are complete on disk
                for shard in entry["shards"]:
                    path = work / shard["record"]["file"]
                    assert xxhash.xxh3_128(path.read_bytes()).hexdigest() == shard["record"]["xxh3_128"]
        else:  # the timer fired after the run had finished: a complete cache, started over next time
            assert _digest(out) == want
            shutil.rmtree(out)
    print(f"kill -9 resume: {killed} of {len(points)} runs killed mid-extraction, all resumed to a byte-identical cache")
    assert killed >= 10, f"only {killed} of {len(points)} runs were killed"
    if proc.returncode == 0:  # the last timer fired too late (a loaded machine): leave a half-done run to resume
        proc = _extract(prepared, tiny_teacher, out, kill_after=total_batches // 2)
        assert proc.returncode == -9, proc.stderr[-2000:]

    final = _extract(prepared, tiny_teacher, out)
    assert final.returncode == 0, final.stderr[-2000:]
    resumed = json.loads(final.stdout.strip().splitlines()[-1])
    assert sum(resumed.values()) > 0  # it really resumed rather than starting over
    assert _digest(out) == want
    assert not work_dir_for(out).exists()


def test_journal_of_another_job_is_discarded(tmp_path, tiny_teacher, tiny_prepared):
    prepared = tmp_path / "prepared"
    save_prepared(prepared, *tiny_prepared)
    out = tmp_path / "cache"
    proc = _extract(prepared, tiny_teacher, out, kill_after=20, delay=0.0)
    assert proc.returncode == -9
    journal = work_dir_for(out) / "journal.json"
    saved = json.loads(journal.read_text())
    saved["key"] = "0" * 64  # as if params changed between the two runs
    journal.write_text(json.dumps(saved))
    final = _extract(prepared, tiny_teacher, out)
    assert final.returncode == 0
    assert json.loads(final.stdout.strip().splitlines()[-1]) == {"train": 0, "dev": 0}


def test_disk_full_while_writing_a_shard_is_one_error_and_loses_no_finished_shard(
    tmp_path, tiny_teacher, tiny_prepared, monkeypatch
):
    import errno

    import pyarrow as pa

    from pipeline.errors import PipelineError
    from tests.conftest import build_cache

    real_osfile = pa.OSFile

    def filling_disk(path, mode="rb"):  # the fourth train shard finds the disk full
        if "train-00003" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_osfile(path, mode)

    out = tmp_path / "cache"
    monkeypatch.setattr(pa, "OSFile", filling_disk)
    with pytest.raises(PipelineError, match=r"could not write a train shard \(No space left on device\); free disk space"):
        build_cache(tiny_teacher, tiny_prepared, out, shard_max_bytes=20_000, batch_size=8)
    assert not out.exists()
    journal = json.loads((work_dir_for(out) / "journal.json").read_text())
    assert len(journal["splits"]["train"]["shards"]) == 3  # the three shards finished before the disk filled
    monkeypatch.setattr(pa, "OSFile", real_osfile)
    result = build_cache(tiny_teacher, tiny_prepared, out, shard_max_bytes=20_000, batch_size=8)
    assert result["stats"]["train"]["resumed_batches"] > 0
    ref = build_cache(tiny_teacher, tiny_prepared, tmp_path / "ref", shard_max_bytes=20_000, batch_size=8)
    assert result["manifest"] == ref["manifest"]
