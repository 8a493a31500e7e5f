"""The one cache writer: rows in, sharded Arrow IPC files and a manifest out.

A shard is written under a hidden temporary name and renamed only when complete; its sha256 and per-batch CRC-32s are
computed on a small thread pool while the next shard is being written (hashlib and zlib release the GIL), and a shard
counts as done only once its record holds them. The manifest is written last, atomically (fsynced), so a reader never
sees a partial shard or a manifest listing one. Shards are not fsynced one by one: an extraction resumed after a crash
re-checks every finished shard against its sha256 (`pipeline.extract`), and readers check CRCs, so a shard torn by a
power cut is found and rewritten rather than trusted. Completed shards can be handed back in (`resume`) so an
interrupted extraction continues where it stopped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.schema import (FORMAT_VERSION, MANIFEST, STORAGE, FieldSpec, arrow_schema, fields_to_manifest, file_sha256,
                                   shard_batch_crc32, write_json_atomic)
from pipeline.errors import PipelineError


@dataclass
class CacheBatch:
    """Rows of one split. Ragged values are flat over real tokens, in row order.

    `fields[name]` is (rows, width) for kind 'example', (sum(length), width) for 'token', and flat for 'token_pair'.
    """

    example_id: np.ndarray
    length: np.ndarray
    label: np.ndarray
    input_ids: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.example_id)


def _finish_shard(tmp: Path, final: Path, rows: int, tokens: int) -> dict:
    """Publish a closed shard under its final name and hash it: the record the manifest and the journal keep."""
    os.replace(tmp, final)
    return {"file": final.name, "rows": rows, "tokens": tokens, "bytes": final.stat().st_size,
            "sha256": file_sha256(final), "batch_crc32": shard_batch_crc32(final)}


class _ByteBudget:
    """Caps the bytes handed to the lanes and not yet written. One batch is always admitted when nothing is in flight,
    so a budget of 0 means one batch at a time."""

    def __init__(self, limit: int):
        self.limit, self.pending = limit, 0
        self.cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.pending == 0 or self.pending + n <= self.limit)
            self.pending += n

    def release(self, n: int) -> None:
        with self.cond:
            self.pending -= n
            self.cond.notify_all()


class _Shard:
    """One shard being written on its lane (a single thread, so its batches land in order). A write error is kept and
    raised at the split's next write or when the shard closes; `close` publishes the shard and queues its hashing on
    the finisher pool."""

    def __init__(self, tmp: Path, final: Path, schema: pa.Schema, lane: ThreadPoolExecutor, finisher: ThreadPoolExecutor,
                 budget: _ByteBudget):
        self.tmp, self.final, self.schema, self.lane, self.finisher, self.budget = tmp, final, schema, lane, finisher, budget
        self.error: BaseException | None = None  # the first failure on the lane; the shard is never published after it
        self._sink = self._writer = None

    def append(self, batch: pa.RecordBatch, nbytes: int, on_written: Callable[[], None] | None) -> None:
        """Queue a batch on the lane (after waiting for room in the budget); `on_written` runs once it is in the file
        (or failed), so the caller may then reuse the memory the batch points to."""
        self.budget.acquire(nbytes)
        try:
            self.lane.submit(self._write, batch, nbytes, on_written)
        except BaseException:
            self.budget.release(nbytes)
            if on_written is not None:
                on_written()
            raise

    def _write(self, batch: pa.RecordBatch, nbytes: int, on_written) -> None:
        try:
            if self.error is None:
                if self._writer is None:
                    self._sink = pa.OSFile(str(self.tmp), "wb")
                    self._writer = pa.ipc.new_file(self._sink, self.schema)
                self._writer.write_batch(batch)
        except BaseException as exc:  # kept, not lost in a future nobody reads: the shard would close a batch short
            self.error = exc
        finally:
            self.budget.release(nbytes)
            if on_written is not None:
                on_written()

    def close(self, rows: int, tokens: int) -> Future:
        """Future (of the lane's close) whose result is the future of the shard's record."""
        return self.lane.submit(self._close, rows, tokens)

    def _close(self, rows: int, tokens: int) -> Future:
        if self.error is None:
            try:
                self._writer.close()
                self._sink.close()
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            self._discard()
            raise self.error
        return self.finisher.submit(_finish_shard, self.tmp, self.final, rows, tokens)

    def discard(self) -> None:
        """Drop the shard once its queued writes are done (waits for the lane)."""
        self.lane.submit(self._discard).result()

    def _discard(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
                self._sink.close()
        except OSError:
            pass
        finally:
            self._sink = self._writer = None
            self.tmp.unlink(missing_ok=True)


def _record_of(closing: Future) -> dict:
    return closing.result().result()  # re-raises an OSError of the lane or of the hashing pool


def _settled(closing: Future) -> bool:
    return closing.done() and (closing.exception() is not None or closing.result().done())


def _failed(closing: Future) -> bool:
    return closing.exception() is not None or closing.result().exception() is not None


class _ShardedSplit:
    def __init__(self, cache_dir: Path, split: str, schema: pa.Schema, max_bytes: int, done: list[dict],
                 lanes: list[ThreadPoolExecutor], finisher: ThreadPoolExecutor, budget: _ByteBudget):
        self.cache_dir, self.split, self.schema, self.max_bytes = cache_dir, split, schema, max_bytes
        self.shards: list[dict] = list(done)
        self.pending: list[tuple[Future, Any]] = []  # closed shards being written out and hashed, in order, with tags
        self.lanes, self.finisher, self.budget = lanes, finisher, budget
        self._open: _Shard | None = None
        self._rows = self._tokens = self._bytes = 0
        self._unreported: list[tuple[dict, Any]] = []  # finished, not yet handed out (an error came first)

    @property
    def _index(self) -> int:
        return len(self.shards) + len(self.pending)

    def write(self, batch: pa.RecordBatch, tokens: int, tag: Any, on_written: Callable[[], None] | None = None) -> None:
        """Shard boundaries depend only on the batches' sizes, in order: the bytes never depend on the lanes.
        `on_written` is called exactly once, here or on the lane."""
        if self._open is not None and self._open.error is not None:
            if on_written is not None:
                on_written()
            raise self._open.error
        if self._open is None:
            name = f"{self.split}-{self._index:05d}.arrow"
            self._open = _Shard(self.cache_dir / f".{name}.tmp", self.cache_dir / name, self.schema,
                                self.lanes[self._index % len(self.lanes)], self.finisher, self.budget)
        self._open.append(batch, batch.nbytes, on_written)
        self._rows += batch.num_rows
        self._tokens += tokens
        self._bytes += batch.nbytes
        if self._bytes >= self.max_bytes:
            self.close_shard(tag)

    def close_shard(self, tag: Any = None) -> None:
        """Close the open shard (if any): its lane finishes writing it, then it is published and hashed."""
        if self._open is None:
            return
        self.pending.append((self._open.close(self._rows, self._tokens), tag))
        self._open = None
        self._rows = self._tokens = self._bytes = 0

    def completed(self, wait: bool = False, stop_at_error: bool = False) -> list[tuple[dict, Any]]:
        """Records (with their tags) of the shards hashed since the last call, in shard order. A write or hashing
        error is raised, or with `stop_at_error` ends the list (after a failure: keep what finished before it)."""
        while self.pending and (wait or _settled(self.pending[0][0])):
            if _failed(self.pending[0][0]):
                if stop_at_error:
                    break
                _record_of(self.pending[0][0])  # raises; the shards before it stay for the next call (salvage)
            closing, tag = self.pending.pop(0)
            record = _record_of(closing)
            self.shards.append(record)
            self._unreported.append((record, tag))
        out, self._unreported = self._unreported, []
        return out

    def abort(self) -> None:
        """Drop the open shard. Closed shards keep their writing and hashing, started or still queued: each is complete
        data, and `CacheWriter.salvage` journals it so a rerun keeps it (cancelling a queued one lost it under load)."""
        if self._open is not None:
            self._open.discard()
            self._open = None


class CacheWriter:
    """Writes a teacher cache. Use as a context manager; the manifest appears only on `close()` after a clean run.

    `resume` maps a split to the shard records already complete in `cache_dir` (from an interrupted run); writing
    continues with the next shard number.

    `lanes` threads write shards in parallel (shard i on lane i mod lanes; Arrow releases the GIL while it copies a
    batch into the file): one lane writes at one core's copy speed, which a GPU teacher outruns. The bytes and shard
    boundaries are the same for any number of lanes. Up to (lanes - 1) * shard_max_bytes of batches wait in the lanes
    (one batch at a time with one lane), so the teacher can run one shard ahead per extra lane.
    """

    def __init__(self, cache_dir: Path | str, fields: list[FieldSpec], meta: dict, shard_max_bytes: int = 256 << 20,
                 resume: dict[str, list[dict]] | None = None, hash_threads: int = 3, lanes: int = 1):
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.cache_dir = Path(cache_dir)
        self.fields = fields
        self.meta = meta
        self.schema = arrow_schema(fields)
        self.shard_max_bytes = shard_max_bytes
        self._finisher = ThreadPoolExecutor(max_workers=hash_threads, thread_name_prefix="cache-hash")
        self._lanes = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cache-lane{i}") for i in range(lanes)]
        self._budget = _ByteBudget((lanes - 1) * shard_max_bytes)
        self._splits = {name: self._new_split(name, done) for name, done in (resume or {}).items()}
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def _new_split(self, name: str, done: list[dict]) -> _ShardedSplit:
        return _ShardedSplit(self.cache_dir, name, self.schema, self.shard_max_bytes, done, self._lanes, self._finisher,
                             self._budget)

    def _record_batch(self, batch: CacheBatch) -> pa.RecordBatch:
        lengths = np.asarray(batch.length, dtype=np.int64)
        token_offsets = np.concatenate([[0], np.cumsum(lengths)])
        if len(batch.input_ids) != token_offsets[-1]:
            raise ValueError(f"input_ids holds {len(batch.input_ids)} tokens but lengths sum to {token_offsets[-1]}")
        arrays = [pa.array(np.asarray(batch.example_id, dtype=np.int64)), pa.array(lengths.astype(np.int32)),
                  pa.array(np.asarray(batch.label, dtype=np.int64)),
                  pa.LargeListArray.from_arrays(pa.array(token_offsets), pa.array(np.asarray(batch.input_ids, dtype=np.int32)))]
        for spec in self.fields:
            values = np.ascontiguousarray(batch.fields[spec.name]).reshape(-1)
            stored = STORAGE[spec.dtype][1]
            if values.dtype != stored and values.dtype.kind in "iu" and np.dtype(stored).kind in "iu":
                values = values.astype(stored)  # e.g. int32 vocabulary indices into a uint16 field (checked by the caller)
            if spec.kind == "example":
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values), spec.width))
                continue
            if spec.kind == "token":
                offsets = token_offsets * spec.width
            else:
                offsets = np.concatenate([[0], np.cumsum(spec.width * lengths * lengths)])
            if len(values) != offsets[-1]:
                raise ValueError(f"field {spec.name}: {len(values)} values, expected {offsets[-1]}")
            arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _io(self, split: str, action, *args):
        try:
            return action(*args)
        except OSError as exc:
            self.abort()
            raise PipelineError(f"{self.cache_dir}: could not write a {split} shard ({exc.strerror or exc}); free disk space "
                                "or fix permissions, then rerun the extract stage (finished shards are kept)") from None

    def _split(self, name: str) -> _ShardedSplit:
        if name not in self._splits:
            self._splits[name] = self._new_split(name, [])
        return self._splits[name]

    def write(self, split: str, batch: CacheBatch, tag: Any = None,
              on_written: Callable[[], None] | None = None) -> list[tuple[dict, Any]]:
        """Append rows. Returns (record, tag) for each shard of this split whose hashing finished since the last call,
        in order; `tag` is the one given with the write that filled the shard (the extractor passes its batch count).

        The batch's arrays are written later, on a lane, without a copy: keep them unchanged until `on_written` is
        called (once, also when the write fails); without it, the writer holds a reference until then."""
        sharded = self._split(split)
        try:
            record_batch = self._record_batch(batch)
        except BaseException:
            if on_written is not None:
                on_written()
            raise
        self._io(split, sharded.write, record_batch, int(np.sum(batch.length)), tag, on_written)
        return self._io(split, sharded.completed)

    def finish_split(self, split: str, tag: Any = None) -> list[tuple[dict, Any]]:
        """Close the split's open shard and wait for its hashing; returns the records not yet returned (see `write`)."""
        sharded = self._split(split)
        self._io(split, sharded.close_shard, tag)
        return self._io(split, sharded.completed, True)

    def close(self) -> dict:
        """Close open shards, wait for their hashes and write the manifest; returns it."""
        splits = {}
        for name, split in self._splits.items():
            self._io(name, split.close_shard)
            self._io(name, split.completed, True)
            splits[name] = {"rows": sum(s["rows"] for s in split.shards), "tokens": sum(s["tokens"] for s in split.shards),
                            "shards": split.shards}
        self._shutdown()
        manifest = {"format_version": FORMAT_VERSION, **self.meta, "fields": fields_to_manifest(self.fields),
                    "splits": splits, "bytes": sum(s["bytes"] for sp in splits.values() for s in sp["shards"])}
        self._io("manifest", write_json_atomic, self.cache_dir / MANIFEST, manifest)
        return manifest

    def abort(self) -> None:
        for split in self._splits.values():
            split.abort()

    def salvage(self) -> dict[str, list[tuple[dict, Any]]]:
        """After a failure: the shards whose hashing still completed, per split, in order (the caller journals them)."""
        out = {}
        for name, split in self._splits.items():
            split.abort()
            out[name] = split.completed(wait=True, stop_at_error=True)
            split.pending = []
        self._shutdown()
        return out

    def _shutdown(self) -> None:
        for lane in self._lanes:  # lanes first: a closing shard queues its hashing on the finisher
            lane.shutdown(wait=True)
        self._finisher.shutdown(wait=True)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
