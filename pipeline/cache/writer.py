"""The one cache writer: rows in, sharded Arrow IPC files and a manifest out.

A shard is written under a hidden temporary name, fsynced, and renamed only when complete; the manifest is written
last, atomically, so a reader never sees a partial shard or a manifest listing one. Completed shards can be handed
back in (`resume`) so an interrupted extraction continues where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.cache.schema import (FORMAT_VERSION, MANIFEST, FieldSpec, arrow_schema, fields_to_manifest, file_sha256,
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


class _ShardedSplit:
    def __init__(self, cache_dir: Path, split: str, schema: pa.Schema, max_bytes: int, done: list[dict]):
        self.cache_dir, self.split, self.schema, self.max_bytes = cache_dir, split, schema, max_bytes
        self.shards: list[dict] = list(done)
        self._sink = self._writer = None
        self._rows = self._tokens = self._bytes = 0

    @property
    def _name(self) -> str:
        return f"{self.split}-{len(self.shards):05d}.arrow"

    def _tmp(self) -> Path:
        return self.cache_dir / f".{self._name}.tmp"

    def write(self, batch: pa.RecordBatch, tokens: int) -> dict | None:
        if self._writer is None:
            self._sink = pa.OSFile(str(self._tmp()), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._writer.write_batch(batch)
        self._rows += batch.num_rows
        self._tokens += tokens
        self._bytes += batch.nbytes
        return self.close_shard() if self._bytes >= self.max_bytes else None

    def close_shard(self) -> dict | None:
        if self._writer is None:
            return None
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self._sink.close()
        tmp, final = self._tmp(), self.cache_dir / self._name
        os.replace(tmp, final)
        record = {"file": final.name, "rows": self._rows, "tokens": self._tokens, "bytes": final.stat().st_size,
                  "sha256": file_sha256(final), "batch_crc32": shard_batch_crc32(final)}
        self.shards.append(record)
        self._sink = self._writer = None
        self._rows = self._tokens = self._bytes = 0
        return record

    def abort(self) -> None:
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

    def __init__(self, cache_dir: Path | str, fields: list[FieldSpec], meta: dict, shard_max_bytes: int = 256 << 20,
                 resume: dict[str, list[dict]] | None = None):
        self.cache_dir = Path(cache_dir)
        self.fields = fields
        self.meta = meta
        self.schema = arrow_schema(fields)
        self.shard_max_bytes = shard_max_bytes
        self._splits = {name: _ShardedSplit(self.cache_dir, name, self.schema, shard_max_bytes, done)
                        for name, done in (resume or {}).items()}
        self.cache_dir.mkdir(parents=True, exist_ok=True)

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

    def write(self, split: str, batch: CacheBatch) -> dict | None:
        """Append rows; returns the shard record if this write completed a shard."""
        if split not in self._splits:
            self._splits[split] = _ShardedSplit(self.cache_dir, split, self.schema, self.shard_max_bytes, [])
        return self._io(split, self._splits[split].write, self._record_batch(batch), int(np.sum(batch.length)))

    def finish_split(self, split: str) -> dict | None:
        """Close the split's open shard; returns its record if there was one."""
        if split not in self._splits:
            self._splits[split] = _ShardedSplit(self.cache_dir, split, self.schema, self.shard_max_bytes, [])
        return self._io(split, self._splits[split].close_shard)

    def close(self) -> dict:
        """Close open shards and write the manifest; returns it."""
        splits = {}
        for name, split in self._splits.items():
            self._io(name, split.close_shard)
            splits[name] = {"rows": sum(s["rows"] for s in split.shards), "tokens": sum(s["tokens"] for s in split.shards),
                            "shards": split.shards}
        manifest = {"format_version": FORMAT_VERSION, **self.meta, "fields": fields_to_manifest(self.fields),
                    "splits": splits, "bytes": sum(s["bytes"] for sp in splits.values() for s in sp["shards"])}
        self._io("manifest", write_json_atomic, self.cache_dir / MANIFEST, manifest)
        return manifest

    def abort(self) -> None:
        for split in self._splits.values():
            split.abort()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
