"""How a cache's rows are laid out in shards: shard names, the size a batch counts for, where a shard closes, and a
torchrun extraction's per-rank shards renamed into one cache's. The writer closes shards by these rules and the
extraction loop plans its ranks by them, so any number of processes writes the same files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.cache.schema import STORAGE, FieldSpec


def batch_nbytes(fields: list[FieldSpec], lengths: np.ndarray) -> int:
    """The size of the record batch `CacheWriter` makes of rows of these lengths, known before the teacher runs:
    shards close by it, so a torchrun extraction can cut its ranks where a one-process run closes a shard and write the
    same shards (`shard_ends`). It is the value pyarrow's `RecordBatch.nbytes` gave (no validity buffers, as no value
    is null; a large list counts 8 offset bytes per row), by which shards closed before, so caches keep their bytes;
    a test holds the two equal, and the layout no longer depends on how a pyarrow release counts."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rows, tokens, pairs = len(lengths), int(lengths.sum()), int((lengths * lengths).sum())
    total = rows * (8 + 4 + 8) + rows * 8 + tokens * 4  # example_id, length, label, input_ids (offsets + values)
    for spec in fields:
        size = np.dtype(STORAGE[spec.dtype][1]).itemsize * spec.width
        if spec.kind == "example":
            total += rows * size
        else:
            total += rows * 8 + size * (tokens if spec.kind == "token" else pairs)
    return total


def shard_ends(batch_bytes: list[int], max_bytes: int) -> list[int]:
    """The batch counts after which a one-process writer closes a shard (the split's end closes the last one)."""
    ends, held = [], 0
    for i, size in enumerate(batch_bytes):
        held += size
        if held >= max_bytes:
            ends.append(i + 1)
            held = 0
    if not ends or ends[-1] != len(batch_bytes):
        ends.append(len(batch_bytes))
    return ends


def shard_name(split: str, number: int, tag: str = "") -> str:
    """`train-00003.arrow`; a torchrun rank's own shards carry its tag (`train-r001-00003.arrow`) until `merge_ranks`."""
    return f"{split}-{tag}{number:05d}.arrow"


def merge_ranks(cache_dir: Path, per_rank: list[dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """The shard records of every rank of a torchrun extraction (rank order: each rank wrote a contiguous run of the
    length-sorted batches) as one cache's: shards renamed to one numbering per split, so the rows, their order and the
    manifest are those of a one-process run, and no reader can tell how many processes wrote them."""
    merged: dict[str, list[dict]] = {}
    for records in per_rank:
        for split, shards in records.items():
            out = merged.setdefault(split, [])
            for record in shards:
                name = shard_name(split, len(out))
                os.replace(cache_dir / record["file"], cache_dir / name)
                out.append({**record, "file": name})
    return merged
