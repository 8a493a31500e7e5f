"""The one cache writer: rows in, sharded Arrow IPC files and a manifest out.

A shard is written under a hidden temporary name and renamed only when complete; its xxh3-128 and per-batch xxh3-64
digests are computed on a small thread pool while the next shard is being written (hashlib and zlib release the GIL), and a shard
counts as done only once its record holds them. The manifest is written last, atomically (fsynced), so a reader never
sees a partial shard or a manifest listing one. Shards are not fsynced one by one: an extraction resumed after a crash
re-checks every finished shard against its digest (`pipeline.extract`), and readers check batch digests, so a shard torn by a
power cut is found and rewritten rather than trusted. Completed shards can be handed back in (`resume`) so an
interrupted extraction continues where it stopped.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.layout import batch_nbytes, merge_ranks, shard_name
from pipeline.cache.schema import (
    BATCH_DIGEST,
    DIGEST,
    FORMAT_VERSION,
    MANIFEST,
    STORAGE,
    FieldSpec,
    arrow_schema,
    fields_to_manifest,
    file_digest,
    shard_batch_digests,
    write_json_atomic,
)
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


class HashClock:
    """Thread-seconds the hashing pool spent on shards (its threads overlap: not wall time); benchmarks read it."""

    def __init__(self):
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds


def _finish_shard(tmp: Path, final: Path, rows: int, tokens: int, clock: HashClock) -> dict:
    """Publish a closed shard under its final name and hash it: the record the manifest and the journal keep."""
    os.replace(tmp, final)
    started = time.perf_counter()
    try:
        return {
            "file": final.name,
            "rows": rows,
            "tokens": tokens,
            "bytes": final.stat().st_size,
            DIGEST: file_digest(final),
            BATCH_DIGEST: shard_batch_digests(final),
        }
    finally:
        clock.add(time.perf_counter() - started)


class _ShardedSplit:
    def __init__(
        self,
        cache_dir: Path,
        split: str,
        schema: pa.Schema,
        max_bytes: int,
        done: list[dict],
        finisher: ThreadPoolExecutor,
        clock: HashClock,
        tag: str = "",
    ):
        self.cache_dir, self.split, self.schema, self.max_bytes, self.tag = cache_dir, split, schema, max_bytes, tag
        self.shards: list[dict] = list(done)
        self.pending: list[tuple[Future, Any]] = []  # closed shards being hashed, in order, with their tags
        self.finisher, self.clock = finisher, clock
        self._sink = self._writer = None
        self._rows = self._tokens = self._bytes = 0
        self._unreported: list[tuple[dict, Any]] = []  # finished, not yet handed out (an error came first)

    @property
    def _name(self) -> str:
        return shard_name(self.split, len(self.shards) + len(self.pending), self.tag)

    def _tmp(self) -> Path:
        return self.cache_dir / f".{self._name}.tmp"

    def write(self, batch: pa.RecordBatch, tokens: int, nbytes: int, tag: Any) -> None:
        if self._writer is None:
            self._sink = pa.OSFile(str(self._tmp()), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._writer.write_batch(batch)
        self._rows += batch.num_rows
        self._tokens += tokens
        self._bytes += nbytes
        if self._bytes >= self.max_bytes:
            self.close_shard(tag)

    def close_shard(self, tag: Any = None) -> None:
        """Close the open shard (if any) and queue its hashing."""
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        tmp, final = self._tmp(), self.cache_dir / self._name
        self.pending.append((self.finisher.submit(_finish_shard, tmp, final, self._rows, self._tokens, self.clock), tag))
        self._sink = self._writer = None
        self._rows = self._tokens = self._bytes = 0

    def completed(self, wait: bool = False, stop_at_error: bool = False) -> list[tuple[dict, Any]]:
        """Records (with their tags) of the shards hashed since the last call, in shard order. A hashing error is
        raised, or with `stop_at_error` ends the list (after a failure: keep what finished before it). Shards that
        finished before an error raised here are handed out by the next call (`CacheWriter.salvage`), not lost."""
        while self.pending and (wait or self.pending[0][0].done()):
            if self.pending[0][0].exception() is not None:
                if stop_at_error:
                    break
                self.pending[0][0].result()  # re-raises an OSError from the pool
            future, tag = self.pending.pop(0)
            record = future.result()
            self.shards.append(record)
            self._unreported.append((record, tag))
        out, self._unreported = self._unreported, []
        return out

    def abort(self) -> None:
        """Drop the open shard. Closed shards keep their hashing, started or still queued in the pool: each is complete
        data, and `CacheWriter.salvage` journals it so a rerun keeps it (cancelling a queued one lost it under load)."""
        if self._writer is not None:
            try:
                self._writer.close()
                self._sink.close()
            except OSError:
                pass
            finally:
                self._tmp().unlink(missing_ok=True)
            self._sink = self._writer = None


class CacheWriter:
    """Writes a teacher cache. Use as a context manager; the manifest appears only on `close()` after a clean run.

    `resume` maps a split to the shard records already complete in `cache_dir` (from an interrupted run); writing
    continues with the next shard number.
    """

    def __init__(
        self,
        cache_dir: Path | str,
        fields: list[FieldSpec],
        meta: dict,
        shard_max_bytes: int = 256 << 20,
        resume: dict[str, list[dict]] | None = None,
        hash_threads: int = 3,
        shard_tag: str = "",
    ):
        self.cache_dir = Path(cache_dir)
        self.fields = fields
        self.meta = meta
        self.schema = arrow_schema(fields)
        self.shard_max_bytes, self.shard_tag = shard_max_bytes, shard_tag
        self._finisher = ThreadPoolExecutor(max_workers=hash_threads, thread_name_prefix="cache-hash")
        self.hash_clock = HashClock()
        self._splits = {
            name: _ShardedSplit(
                self.cache_dir, name, self.schema, shard_max_bytes, done, self._finisher, self.hash_clock, shard_tag
            )
            for name, done in (resume or {}).items()
        }
        self._tables: dict[str, dict] = {}
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def _record_batch(self, batch: CacheBatch) -> pa.RecordBatch:
        lengths = np.asarray(batch.length, dtype=np.int64)
        token_offsets = np.concatenate([[0], np.cumsum(lengths)])
        if len(batch.input_ids) != token_offsets[-1]:
            raise ValueError(f"input_ids holds {len(batch.input_ids)} tokens but lengths sum to {token_offsets[-1]}")
        arrays = [
            pa.array(np.asarray(batch.example_id, dtype=np.int64)),
            pa.array(lengths.astype(np.int32)),
            pa.array(np.asarray(batch.label, dtype=np.int64)),
            pa.LargeListArray.from_arrays(pa.array(token_offsets), pa.array(np.asarray(batch.input_ids, dtype=np.int32))),
        ]
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
            raise PipelineError(
                f"{self.cache_dir}: could not write a {split} shard ({exc.strerror or exc}); free disk space "
                "or fix permissions, then rerun the extract stage (finished shards are kept)"
            ) from None

    def _split(self, name: str) -> _ShardedSplit:
        if name not in self._splits:
            self._splits[name] = _ShardedSplit(
                self.cache_dir, name, self.schema, self.shard_max_bytes, [], self._finisher, self.hash_clock, self.shard_tag
            )
        return self._splits[name]

    def write(self, split: str, batch: CacheBatch, tag: Any = None) -> list[tuple[dict, Any]]:
        """Append rows. Returns (record, tag) for each shard of this split whose hashing finished since the last call,
        in order; `tag` is the one given with the write that filled the shard (the extractor passes its batch count)."""
        sharded = self._split(split)
        nbytes = batch_nbytes(self.fields, batch.length)  # what shard_ends plans with, so ranks cut where shards close
        self._io(split, sharded.write, self._record_batch(batch), int(np.sum(batch.length)), nbytes, tag)
        return self._io(split, sharded.completed)

    def finish_split(self, split: str, tag: Any = None) -> list[tuple[dict, Any]]:
        """Close the split's open shard and wait for its hashing; returns the records not yet returned (see `write`)."""
        sharded = self._split(split)
        self._io(split, sharded.close_shard, tag)
        return self._io(split, sharded.completed, True)

    def write_table(self, name: str, table: pa.Table) -> None:
        """A table kept beside the shards (`table-<name>.arrow`, Arrow IPC), listed in the manifest with its digest."""
        path = self.cache_dir / f"table-{name}.arrow"

        def write() -> None:
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
                out.write_table(table)

        self._io(name, write)
        self._tables[name] = {
            "file": path.name,
            "rows": table.num_rows,
            "bytes": path.stat().st_size,
            DIGEST: file_digest(path),
        }

    def close(self, ranks: list[dict[str, list[dict]]] | None = None, publish: bool = True) -> dict:
        """Close open shards, wait for their hashes and write the manifest; returns it. Under torchrun rank 0 passes
        `ranks`, every rank's shard records (its own included), and the manifest lists them all (`merge_ranks`); the
        other ranks close with `publish=False`, which writes no manifest and returns their own records per split."""
        own = {}
        for name, split in self._splits.items():
            self._io(name, split.close_shard)
            self._io(name, split.completed, True)
            own[name] = split.shards
        self._finisher.shutdown()
        if not publish:
            return own
        shards = own if ranks is None else self._io("manifest", merge_ranks, self.cache_dir, ranks)
        splits = {
            name: {"rows": sum(s["rows"] for s in records), "tokens": sum(s["tokens"] for s in records), "shards": records}
            for name, records in shards.items()
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            **self.meta,
            "fields": fields_to_manifest(self.fields),
            "splits": splits,
            "bytes": sum(s["bytes"] for sp in splits.values() for s in sp["shards"]),
        }
        if self._tables:  # (caches without tables keep the manifest they always had)
            manifest["tables"] = self._tables
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
        self._finisher.shutdown(wait=True)
        return out

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
