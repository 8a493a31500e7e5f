"""The one cache reader: a manifest-checked, memory-mapped, zero-copy view of the shards.

Rows are read one at a time as numpy views into the mapped files (the nanoGPT memmap idiom): nothing is loaded
whole, so resident memory stays flat however large the cache is. A split is a map-style sequence indexed across
shards through the manifest's row counts, so any sampler can shuffle across shards.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.cache.basis import BASIS_TABLE, bases_from_table
from pipeline.cache.codec import dequantize_int8
from pipeline.cache.relations import RELATIONS_TABLE, projections_from_table
from pipeline.cache.remedy import remedy
from pipeline.cache.rows import ROW_KEYS, Rows
from pipeline.cache.schema import (
    BATCH_DIGEST,
    DIGEST,
    MANIFEST,
    SCALE_SUFFIX,
    STORAGE,
    TOKENIZER_DIR,
    FieldSpec,
    fields_from_manifest,
    file_digest,
    read_manifest,
    record_batch_digest,
    safe_shard_path,
)
from pipeline.errors import PipelineError

# full: xxh3-128 of every shard at open. lazy: sizes at open, then each record batch's xxh3-64 on first touch (the
# default: a flipped byte stops training at the batch that holds it, and no time is spent up front). size: sizes only.
RELEASE_EVERY = 512  # rows read between page releases: bounds resident cache pages to about this many rows' worth
VERIFY_MODES = ("full", "lazy", "size", "none")


class CacheSplit:
    """Rows of one split across its shards. `split[i]` -> dict of numpy arrays shaped per the field kinds."""

    def __init__(
        self,
        cache_dir: Path,
        name: str,
        meta: dict,
        fields: list[FieldSpec],
        columns: list[str] | None = None,
        check_batches: bool = False,
    ):
        self.cache_dir, self.name, self.meta, self.check_batches = cache_dir, name, meta, check_batches
        self.fields = {f.name: f for f in fields}
        wanted = [f for f in self.fields if not f.endswith(SCALE_SUFFIX)] if columns is None else list(columns)
        for col in wanted:
            if col not in self.fields:
                raise PipelineError(
                    f"{cache_dir / MANIFEST}: split '{name}' has no field '{col}' (has: {', '.join(self.fields)})"
                )
        self.columns = wanted
        # int8 fields come back dequantized: their scales are read along with them
        self._read = wanted + [c + SCALE_SUFFIX for c in wanted if self.fields[c].dtype == "int8"]
        self.shard_paths = [safe_shard_path(cache_dir, s["file"]) for s in meta["shards"]]
        self.shard_starts = np.concatenate([[0], np.cumsum([s["rows"] for s in meta["shards"]])]).astype(np.int64)
        self._views = None  # opened lazily, per process: DataLoader workers each map the files themselves
        self._rows: _RowIndex | None = None
        self._maps: list[mmap.mmap] = []
        self._reads = 0

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_views"], state["_maps"], state["_rows"] = None, [], None
        return state

    def _open(self) -> list:
        """Per shard, per record batch: numpy views of every needed column (no copy: they point into the mapping)."""
        views = []
        for path in self.shard_paths:
            try:
                with open(path, "rb") as f:
                    mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self._maps.append(mapping)
                reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapping)))  # zero-copy over our own mapping
                batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            except (pa.ArrowException, OSError) as exc:
                raise PipelineError(f"{path}: shard is unreadable ({exc}); {remedy(path, self.cache_dir)}") from None
            starts = np.concatenate([[0], np.cumsum([b.num_rows for b in batches])]).astype(np.int64)
            per_batch = []
            for b in batches:
                cols = {
                    "example_id": b.column("example_id").to_numpy(),
                    "length": b.column("length").to_numpy(),
                    "label": b.column("label").to_numpy(),
                }
                ids = b.column("input_ids")
                cols["input_ids"] = (ids.offsets.to_numpy(), ids.values.to_numpy())
                for name in self._read:
                    arr = b.column(name)
                    spec = self.fields[name]
                    if spec.kind == "example":
                        cols[name] = arr.values.to_numpy().reshape(len(arr), -1)
                    elif spec.kind == "token":  # (tokens, width): a row is a slice of token offsets, no reshape
                        cols[name] = (arr.offsets.to_numpy() // spec.width, arr.values.to_numpy().reshape(-1, spec.width))
                    else:
                        cols[name] = (arr.offsets.to_numpy(), arr.values.to_numpy())
                cols["_batch"] = b
                per_batch.append(cols)
            views.append((starts, per_batch))
        return views

    def _locate(self, index: int) -> tuple[dict, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for split '{self.name}' with {len(self)} rows")
        index %= len(self)
        if self._views is None:
            self._views = self._open()
        shard = int(np.searchsorted(self.shard_starts, index, side="right")) - 1
        starts, batches = self._views[shard]
        local = index - self.shard_starts[shard]
        b = int(np.searchsorted(starts, local, side="right")) - 1
        return self._batch(shard, b), int(local - starts[b])

    def _batch(self, shard: int, b: int) -> dict:
        """Record batch `b` of `shard`'s views, checked against its digest on first touch when asked to."""
        cols = self._views[shard][1][b]
        if self.check_batches and "_checked" not in cols:
            expected = self.meta["shards"][shard].get(BATCH_DIGEST)
            if expected is not None and (b >= len(expected) or record_batch_digest(cols["_batch"]) != expected[b]):
                raise PipelineError(
                    f"{self.shard_paths[shard]}: record batch {b} does not match its checksum in the manifest "
                    f"(corrupted); {remedy(self.shard_paths[shard], self.cache_dir)}"
                )
            cols["_checked"] = True
        return cols

    def _release_pages(self) -> None:
        """Drop the mapped pages read so far from this process (they stay in the OS page cache; views stay valid and
        fault back in on access), so resident memory does not grow with the cache however many rows are read."""
        for mapping in self._maps:
            mapping.madvise(mmap.MADV_DONTNEED)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        self._reads += 1
        if self._reads % RELEASE_EVERY == 0:
            self._release_pages()
        cols, row = self._locate(index)
        length = int(cols["length"][row])
        offsets, values = cols["input_ids"]
        out = {
            "example_id": int(cols["example_id"][row]),
            "label": int(cols["label"][row]),
            "length": length,
            "input_ids": values[offsets[row] : offsets[row + 1]],
        }
        for name in self.columns:
            spec = self.fields[name]
            if spec.kind == "example":
                out[name] = cols[name][row]
                continue
            offsets, values = cols[name]
            out[name] = values[offsets[row] : offsets[row + 1]].reshape(spec.shape(length))
            if spec.dtype == "int8":
                offsets, scales = cols[name + SCALE_SUFFIX]
                out[name] = dequantize_int8(out[name], scales[offsets[row] : offsets[row + 1]].reshape(-1, 1))
        return out

    def __getitems__(self, indices: list[int]) -> Rows:
        """Many rows at once, as a DataLoader asks for a batch: located together, each field's rows kept as views
        into the mapping (int8 values with their scales), for the collator to pad in one step per field."""
        index = np.asarray(indices, dtype=np.int64)
        if len(index) and (index.min() < -len(self) or index.max() >= len(self)):
            bad = int(index[(index < -len(self)) | (index >= len(self))][0])
            raise IndexError(f"row {bad} out of range for split '{self.name}' with {len(self)} rows")
        index %= max(len(self), 1)
        if self._views is None:
            self._views = self._open()
        if self._rows is None:
            self._rows = _RowIndex(self._views, self._read, self.fields)
        before, self._reads = self._reads, self._reads + len(index)
        if self._reads // RELEASE_EVERY > before // RELEASE_EVERY:
            self._release_pages()
        at = self._rows
        batch_of = at.batch_of[index]
        if self.check_batches:  # each record batch checked on first touch, as single-row reads do
            touched = np.unique(batch_of)
            for g in touched[~at.checked[touched]].tolist():
                self._batch(int(at.shard[g]), int(at.local_batch[g]))
                at.checked[g] = True
        lengths = at.columns["length"][index].astype(np.int64)
        columns: dict[str, list | np.ndarray] = {name: values[index] for name, values in at.columns.items()}
        which, starts, counts = batch_of.tolist(), at.token_start[index].tolist(), lengths.tolist()
        for name, values in at.tokens.items():  # a view per row, nothing copied
            columns[name] = [values[g][s : s + n] for g, s, n in zip(which, starts, counts)]
        for name, offsets, values in at.pairs:  # (heads, T, T) per row: its own offsets
            spec, rows = self.fields[name], at.row[index].tolist()
            columns[name] = [
                values[g][offsets[g][r] : offsets[g][r + 1]].reshape(spec.shape(n)) for g, r, n in zip(which, rows, counts)
            ]
        scales = {name: columns.pop(name + SCALE_SUFFIX) for name in self.columns if self.fields[name].dtype == "int8"}
        return Rows(lengths, columns, scales)

    def lengths(self) -> np.ndarray:
        """Token counts of all rows, read from the small `length` column only."""
        out = []
        for path in self.shard_paths:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all().select(["length"])
            out.append(table.column("length").to_numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)

    def column(self, name: str) -> np.ndarray:
        """A whole per-example column (example_id, label, length, or an 'example'-kind field) as one array."""
        out = []
        for path in self.shard_paths:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all().select([name])
            col = table.column(name).combine_chunks()
            out.append(
                col.flatten().to_numpy().reshape(len(col), -1) if pa.types.is_fixed_size_list(col.type) else col.to_numpy()
            )
        return np.concatenate(out)


class TeacherCache:
    """A cache directory opened through its manifest, with every shard checked against it."""

    def __init__(self, cache_dir: Path | str, verify: str = "lazy"):
        if verify not in VERIFY_MODES:
            raise PipelineError(f"cache verify mode must be one of {VERIFY_MODES}, got '{verify}'")
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        self.fields = fields_from_manifest(self.manifest)
        for f in self.fields:
            if f.dtype not in STORAGE:
                raise PipelineError(
                    f"{self.cache_dir / MANIFEST}: field '{f.name}' has unknown dtype '{f.dtype}'; rebuild the cache"
                )
        self.verify_mode = verify
        if verify != "none":
            self.verify(full=verify == "full")

    def verify(self, full: bool = True) -> None:
        """Every listed shard exists with its recorded size (and, with `full`, its digest)."""
        for _split, meta in self.manifest["splits"].items():
            for shard in meta["shards"]:
                path = safe_shard_path(self.cache_dir, shard["file"])
                if not path.is_file():
                    what = "is not a regular file (a device, a directory or a link to one)" if path.exists() else "is missing"
                    raise PipelineError(f"{path}: shard listed in the manifest {what}; {remedy(path, self.cache_dir)}")
                if path.stat().st_size != shard["bytes"]:
                    raise PipelineError(
                        f"{path}: shard is {path.stat().st_size} bytes, manifest says {shard['bytes']}; "
                        f"{remedy(path, self.cache_dir)}"
                    )
                if full and file_digest(path) != shard[DIGEST]:
                    raise PipelineError(
                        f"{path}: shard checksum does not match the manifest (corrupted); {remedy(path, self.cache_dir)}"
                    )

    def table(self, name: str) -> pa.Table:
        """A table kept beside the shards (`CacheWriter.write_table`), checked against its digest in the manifest."""
        record = self.manifest.get("tables", {}).get(name)
        if record is None:
            raise PipelineError(
                f"{self.cache_dir / MANIFEST}: no table '{name}' (a cache of another task, or from older code); "
                "rerun the extract stage (`dvc repro extract`)"
            )
        path = safe_shard_path(self.cache_dir, record["file"])
        if not path.is_file() or path.stat().st_size != record["bytes"] or file_digest(path) != record[DIGEST]:
            raise PipelineError(
                f"{path}: the cache's '{name}' table is missing or does not match the manifest; {remedy(path, self.cache_dir)}"
            )
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()

    def bases(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """A low-rank cache's basis per hidden layer (`pipeline.cache.basis`): layer -> (mean, components); {} for
        a full-width cache."""
        return bases_from_table(self.table(BASIS_TABLE)) if self.manifest.get("rank") else {}

    def projections(self) -> dict[int, dict[str, np.ndarray]]:
        """A relations-'inputs' cache's query/key/value projections per attention/value layer (`pipeline.cache.relations`);
        {} for a cache of maps and value vectors."""
        return projections_from_table(self.table(RELATIONS_TABLE)) if self.manifest.get("relations") == "inputs" else {}

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["label_names"])

    @property
    def tokenizer_dir(self) -> Path:
        return self.cache_dir / TOKENIZER_DIR

    def split(self, name: str, columns: list[str] | None = None) -> CacheSplit:
        if name not in self.manifest["splits"]:
            raise PipelineError(f"{self.cache_dir / MANIFEST}: no split '{name}' (has: {', '.join(self.splits)}); rerun extract")
        return CacheSplit(
            self.cache_dir, name, self.manifest["splits"][name], self.fields, columns, check_batches=self.verify_mode == "lazy"
        )


class _RowIndex:
    """Where every row of a split is, for batched reads without a loop over record batches: per row its record batch
    (numbered across shards), its row and first token in it; the per-example columns (ids, labels, lengths, example
    fields: a few values a row) gathered into one array each; per token field the record batches' (tokens, width)
    views, so a row is one slice."""

    def __init__(self, views: list, read: list[str], fields: dict):
        batches = [(shard, b, cols) for shard, (_, per_batch) in enumerate(views) for b, cols in enumerate(per_batch)]
        self.shard = np.array([shard for shard, _, _ in batches], dtype=np.int64)
        self.local_batch = np.array([b for _, b, _ in batches], dtype=np.int64)
        self.checked = np.zeros(len(batches), dtype=bool)
        sizes = [len(cols["length"]) for _, _, cols in batches]
        self.batch_of = np.repeat(np.arange(len(batches)), sizes)
        self.row = np.concatenate([np.arange(n) for n in sizes]) if batches else np.zeros(0, np.int64)
        self.token_start = (
            np.concatenate([cols["input_ids"][0][:-1] for _, _, cols in batches]) if batches else np.zeros(0, np.int64)
        )
        example = [*ROW_KEYS, *(n for n in read if fields[n].kind == "example")]
        self.columns = {n: np.concatenate([cols[n] for _, _, cols in batches]) for n in example} if batches else {}
        token = ["input_ids", *(n for n in read if fields[n].kind == "token")]
        self.tokens = {n: [cols[n][1] for _, _, cols in batches] for n in token}
        self.pairs = [
            (n, [cols[n][0] for _, _, cols in batches], [cols[n][1] for _, _, cols in batches])
            for n in read
            if fields[n].kind == "token_pair"
        ]
