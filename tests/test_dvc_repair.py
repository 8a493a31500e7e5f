"""A byte flipped in a DVC-tracked cache shard: the error's own commands bring back a verified cache, with the
project's DVC config (copies) and with hard links (where DVC's stored copy is damaged too)."""

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cache import TeacherCache
from pipeline.errors import PipelineError
from tests.conftest import ROOT

DVC = str(Path(sys.executable).with_name("dvc"))


def _sh(repo: Path, command: str) -> None:
    proc = subprocess.run(["bash", "-c", command], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def _repo(tmp_path: Path, pristine: Path, cache_type: str) -> Path:
    """A DVC project whose `extract` stage writes the cache (a copy of a built one), run and then checked out from
    DVC's cache as a clone + pull would be."""
    repo = tmp_path / "project"
    repo.mkdir()
    _sh(repo, f"{DVC} init -q --no-scm && {DVC} config cache.type {cache_type}")
    (repo / "dvc.yaml").write_text(
        f"stages:\n  extract:\n    cmd: mkdir -p artifacts && cp -r {pristine} artifacts/cache\n    outs:\n      - artifacts/cache\n"
    )
    _sh(repo, f"{DVC} repro -q && rm -rf artifacts/cache && {DVC} checkout -q")
    return repo


def _flip_a_byte(shard: Path) -> None:
    """In place and with the mtime kept, as bit rot or a careless tool would: DVC's own status does not notice."""
    stat = shard.stat()
    os.chmod(shard, 0o644)
    with open(shard, "r+b") as f:
        f.seek(stat.st_size // 2)
        byte = f.read(1)
        f.seek(stat.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _follow_the_error(repo: Path) -> str:
    with pytest.raises(PipelineError) as caught:
        TeacherCache(repo / "artifacts" / "cache", verify="full")
    message = str(caught.value)
    command = re.findall(r"`([^`]+)`", message)[0]  # the first command the message gives
    _sh(repo, command.replace("dvc ", f"{DVC} "))
    return message


def _verified(repo: Path) -> None:
    TeacherCache(repo / "artifacts" / "cache", verify="full")
    # and DVC's stored copy is good: a fresh checkout verifies too
    _sh(repo, f"rm -rf artifacts/cache && {DVC} checkout -q")
    TeacherCache(repo / "artifacts" / "cache", verify="full")


def _first_shard(repo: Path) -> Path:
    return sorted((repo / "artifacts" / "cache").glob("train-*.arrow"))[0]


def test_the_project_copies_outputs_out_of_dvcs_cache():
    config = configparser.ConfigParser()
    config.read_string("\n".join(line.strip() for line in (ROOT / ".dvc" / "config").read_text().splitlines()))
    types = [t.strip() for t in config["cache"]["type"].strip('"').split(",")]
    assert types == ["reflink", "copy"]  # never a hard link or symlink the workspace could write through


def test_a_damaged_shard_is_restored_from_dvcs_copy(tmp_path, tiny_cache):
    repo = _repo(tmp_path, tiny_cache, "reflink,copy")
    _flip_a_byte(_first_shard(repo))
    message = _follow_the_error(repo)
    assert "shard checksum does not match the manifest" in message and re.search(
        r"`rm -rf \S+/artifacts/cache && dvc checkout \S+/artifacts/cache`", message
    )
    _verified(repo)


def test_a_damaged_hard_linked_shard_names_dvcs_damaged_copy_and_is_rebuilt(tmp_path, tiny_cache):
    repo = _repo(tmp_path, tiny_cache, "hardlink")
    shard = _first_shard(repo)
    assert shard.stat().st_nlink == 2  # the workspace shard and DVC's stored copy are one file
    _flip_a_byte(shard)
    message = _follow_the_error(repo)
    assert re.search(r"hard-linked to DVC's stored copy .*\.dvc/cache/files/md5/", message)
    assert "dvc repro -s -f extract" in message
    _verified(repo)
    shutil.rmtree(repo / "artifacts")
