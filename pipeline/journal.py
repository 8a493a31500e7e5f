"""Resumable extraction: the work dir, its journal of finished shards, and the writer thread that keeps both.

An extraction in progress lives in a work dir beside the cache. Each shard enters the journal once it is renamed and
hashed, tagged with the batch count it ends at; rerun after a crash (even `kill -9`), the journal's shards are checked
against their digest and kept, and the loop starts after the last one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Protocol

from pipeline.cache import CacheBatch, CacheWriter, FieldSpec
from pipeline.cache.schema import DIGEST, file_digest, write_json_atomic

log = logging.getLogger(__name__)

JOURNAL = "journal.json"
_RANKED = re.compile(r"-r(\d{3})-\d{5}\.arrow(\.tmp)?$|^journal-r(\d{3})\.json$")


def journal_name(rank: int = 0, world: int = 1) -> str:
    """A one-process extraction keeps `journal.json`; under torchrun each rank keeps its own."""
    return JOURNAL if world == 1 else f"journal-r{rank:03d}.json"


def shard_tag(rank: int = 0, world: int = 1) -> str:
    """What a rank puts into its shard names (`train-r001-00000.arrow`) until rank 0 numbers them all as one cache."""
    return "" if world == 1 else f"r{rank:03d}-"


def owner(name: str) -> int | None:
    """The rank a work-dir file belongs to (None: shared, or from a one-process run)."""
    match = _RANKED.search(name)
    return None if match is None else int(match.group(1) or match.group(3))


def work_dir_for(out_dir: Path) -> Path:
    """Where an extraction in progress lives: beside the cache, not inside it, so `dvc repro` (which deletes a stage's
    outputs before running it) leaves finished shards of an interrupted run alone."""
    return out_dir.parent / f".{out_dir.name}.partial"


def job_key(meta: dict, fields: list[FieldSpec], batch_size: int, shard_max_bytes: int, world: int = 1) -> str:
    """Everything that decides the bytes of the shards (and, under torchrun, which rank writes which batches); a work
    dir made under another key is discarded."""
    spec = {"meta": meta, "fields": [f.__dict__ for f in fields], "batch_size": batch_size, "shard_max_bytes": shard_max_bytes}
    if world > 1:
        spec["world"] = world
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def load_journal(work: Path, key: str, rank: int = 0, world: int = 1) -> dict[str, dict]:
    """Verified progress of an interrupted run: per split, the shards whose digest still matches, in order. Everything
    else in the work dir (partial shards, shards past a bad one, files of another job) is removed, except, under
    torchrun, the files of the other ranks: each rank checks its own, and rank 0 also clears what belongs to no rank."""
    journal = work / journal_name(rank, world)
    state = {}
    if journal.is_file():
        saved = json.loads(journal.read_text())
        if saved.get("key") == key:
            for split, entry in saved["splits"].items():
                good = []
                for shard in entry["shards"]:
                    path = work / shard["record"]["file"]
                    if not (
                        path.is_file()
                        and path.stat().st_size == shard["record"]["bytes"]
                        and file_digest(path) == shard["record"][DIGEST]
                    ):
                        break
                    good.append(shard)
                state[split] = {"shards": good, "done": entry["done"] and len(good) == len(entry["shards"])}
    keep = {s["record"]["file"] for entry in state.values() for s in entry["shards"]}
    if state:
        keep.add(journal.name)  # until the next save: a crash before it must not forget the verified shards
    if work.exists():
        for path in work.iterdir():
            mine = owner(path.name) == rank if world > 1 else True
            foreign = world > 1 and rank == 0 and (owner(path.name) is None or owner(path.name) >= world)
            if path.name not in keep and (mine or foreign):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return state


def save_journal(work: Path, key: str, state: dict, name: str = JOURNAL) -> None:
    write_json_atomic(work / name, {"key": key, "splits": state})


class BatchSink(Protocol):
    """Where the teacher loop hands its batches: `put("batch", split, CacheBatch, batch_end, ready)` per batch and
    `put("finish", split, None, batches)` per split. `ready` (or None on the CPU) is the batch's pending host copy:
    the sink calls `ready.synchronize()` before reading the batch and `ready.release()` when done with it. `depth` is
    how many batches the sink may hold; `wait_s` is the time `put` blocked."""

    depth: int
    wait_s: float

    def put(self, kind: str, split: str, batch: CacheBatch | None, batch_end: int, ready=None) -> None: ...


class ShardSink:
    """The extractor's sink: writes batches and keeps the journal on a background thread, so Arrow building, file
    writes and shard hashing overlap the next teacher forward. The bounded queue caps memory; a writer error is raised
    in the main thread by the next `put` or by `close`."""

    def __init__(self, writer: CacheWriter, work: Path, key: str, state: dict, depth: int = 2, journal: str = JOURNAL):
        self.writer, self.work, self.key, self.state, self.journal = writer, work, key, state, journal
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.depth = depth
        self.error: BaseException | None = None
        self.busy_s = self.wait_s = 0.0  # writer thread busy; producer blocked on a full queue (writer-bound)
        self.thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            kind, split, batch, batch_end, ready = item
            try:
                if self.error is None:  # after a failure: drain (and free pinned buffers) so the producer never blocks
                    self._handle(kind, split, batch, batch_end, ready)
            finally:
                if ready is not None:
                    ready.release()

    def _handle(self, kind, split, batch, batch_end, ready) -> None:
        started = time.perf_counter()
        try:
            if ready is not None:
                ready.synchronize()  # the batch's device->host copies have landed
            entry = self.state.setdefault(split, {"shards": [], "done": False})
            done = (
                self.writer.write(split, batch, tag=batch_end)
                if kind == "batch"
                else self.writer.finish_split(split, tag=batch_end)
            )
            for record, tag in done:
                entry["shards"].append({"record": record, "batch_end": tag})
            if kind == "finish":
                entry["done"] = True
            if done or kind == "finish":
                save_journal(self.work, self.key, self.state, self.journal)
        except BaseException as exc:  # re-raised in the main thread by put()/close()
            self.error = exc
            self._salvage()
        self.busy_s += time.perf_counter() - started

    def _salvage(self) -> None:
        """Journal the shards that finished hashing before the failure, so a rerun keeps them."""
        try:
            salvaged = self.writer.salvage()
            for split, done in salvaged.items():
                self.state.setdefault(split, {"shards": [], "done": False})["shards"].extend(
                    {"record": record, "batch_end": tag} for record, tag in done
                )
            if any(salvaged.values()):
                save_journal(self.work, self.key, self.state, self.journal)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.exception("could not journal the finished shards after a write error")

    def put(self, kind: str, split: str, batch: CacheBatch | None, batch_end: int, ready=None) -> None:
        if self.error is not None:
            raise self.error
        started = time.perf_counter()
        self.queue.put((kind, split, batch, batch_end, ready))
        self.wait_s += time.perf_counter() - started

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
