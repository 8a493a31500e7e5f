"""The cache format: field kinds, the Arrow schema of a shard, and the manifest's checks.

A cache is a directory: `manifest.json`, shards `<split>-<NNNNN>.arrow` (Arrow IPC file format, memory-mappable), and
the tokenizer and teacher config the rows were made with. One row per example. Every field has a *kind* that says how
its flat Arrow list unpacks, so per-token logits (NER) and attention maps are new fields, not a new format:

- `example`: fixed width per example           -> shape (width,)          e.g. logits (num_labels,)
- `token`:   `width` values per real token      -> shape (length, width)   e.g. hidden_4 (length, hidden); topk_values
- `token_pair`: `width` maps of length x length -> shape (width, L, L)     e.g. attention_4 (heads, L, L)
Only real tokens are stored, never padding.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import xxhash

from pipeline.errors import PipelineError

FORMAT_VERSION = 2  # 2: xxh3 digests (shards: xxh3-128, record batches: xxh3-64) in place of sha256 / CRC-32
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TEACHER_CONFIG = "teacher_config.json"

# storage dtype name -> (arrow type of stored values, numpy dtype the reader returns)
STORAGE = {
    "float32": (pa.float32(), np.float32),
    "float16": (pa.float16(), np.float16),
    "bfloat16": (pa.uint16(), np.uint16),  # bf16 bits, bit-exact; reinterpret with torch .view(torch.bfloat16)
    "int32": (pa.int32(), np.int32),
    "uint16": (pa.uint16(), np.uint16),  # small integers, e.g. top-k vocabulary indices of a <= 65,536-token vocabulary
    "int8": (pa.int8(), np.int8),  # quantized; the reader multiplies by the field's `<name>_scale` field
}
SCALE_SUFFIX = "_scale"
# what every reader of a manifest relies on, and its JSON type
MANIFEST_KEYS = {"fields": list, "splits": dict}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str
    dtype: str
    width: int

    def arrow_type(self) -> pa.DataType:
        value_type = STORAGE[self.dtype][0]
        if self.kind == "example":
            return pa.list_(value_type, self.width)
        return pa.large_list(value_type)

    def values_per_row(self, length: int) -> int:
        return {"example": self.width, "token": self.width * length, "token_pair": self.width * length * length}[self.kind]

    def shape(self, length: int) -> tuple[int, ...]:
        return {"example": (self.width,), "token": (length, self.width), "token_pair": (self.width, length, length)}[self.kind]


# Columns every cache has, in this order; teacher outputs follow.
BASE_COLUMNS = [
    ("example_id", pa.int64()),
    ("length", pa.int32()),
    ("label", pa.int64()),
    ("input_ids", pa.large_list(pa.int32())),
]


def hidden_field(layer: int) -> str:
    return f"hidden_{layer}"


def attention_field(layer: int) -> str:
    return f"attention_{layer}"


def value_field(layer: int) -> str:
    return f"value_{layer}"


def token_fields(name: str, dtype: str, width: int) -> list[FieldSpec]:
    """The stored fields of one per-token float tensor: itself, plus a per-token scale when quantized to int8."""
    if dtype == "int8":
        return [FieldSpec(name, "token", "int8", width), FieldSpec(name + SCALE_SUFFIX, "token", "float16", 1)]
    return [FieldSpec(name, "token", dtype, width)]


def arrow_schema(fields: list[FieldSpec]) -> pa.Schema:
    return pa.schema(BASE_COLUMNS + [(f.name, f.arrow_type()) for f in fields])


def fields_from_manifest(manifest: dict) -> list[FieldSpec]:
    return [FieldSpec(**f) for f in manifest["fields"]]


def fields_to_manifest(fields: list[FieldSpec]) -> list[dict]:
    return [asdict(f) for f in fields]


def safe_shard_path(cache_dir: Path, name: str) -> Path:
    """A manifest's shard name as a path inside `cache_dir`; names that escape it are refused."""
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or not name or len(pure.parts) != 1:
        raise PipelineError(
            f"{cache_dir / MANIFEST}: shard name '{name}' points outside the cache directory; the manifest "
            "is corrupt or hostile: rerun the extract stage or `dvc pull` the cache"
        )
    return cache_dir / name


def read_manifest(cache_dir: Path) -> dict:
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path}: no cache manifest; run `dvc repro extract` (or `dvc pull` the cache) first")
    fix = "rerun the extract stage alone (`dvc repro -s -f extract`) or `dvc pull` the cache"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: manifest is not UTF-8 text (corrupted); {fix}") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: manifest is not valid JSON ({exc}); {fix}") from None
    if not isinstance(manifest, dict):
        raise PipelineError(f"{path}: manifest is a JSON {type(manifest).__name__}, not an object (corrupted); {fix}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise PipelineError(
            f"{path}: cache format version {version} but this code reads version {FORMAT_VERSION}; rerun the "
            "extract stage (`dvc repro extract`) to rebuild the cache"
        )
    missing = [key for key, kind in MANIFEST_KEYS.items() if not isinstance(manifest.get(key), kind)]
    if missing:
        raise PipelineError(f"{path}: manifest lacks or mistypes {', '.join(missing)} (corrupted or hand-edited); {fix}")
    for name, split in manifest["splits"].items():
        if not isinstance(split, dict) or not isinstance(split.get("shards"), list):
            raise PipelineError(f"{path}: manifest split '{name}' has no list of shards (corrupted); {fix}")
    return manifest


def _hash_file(path: Path, h, chunk: int = 1 << 22) -> str:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The cryptographic digest, kept for identities (a teacher's weights); integrity checks use `file_digest`."""
    return _hash_file(path, hashlib.sha256())


# The integrity digest of shards and tables: xxh3-128, about 8x sha256's speed per core (docs/findings.md), so hashing
# never bounds extraction. It guards against damage (torn writes, flipped bits, truncation), not against an attacker:
# a manifest's own integrity is DVC's (it md5s every output) and the remote's.
DIGEST = "xxh3_128"
BATCH_DIGEST = "batch_xxh3_64"


def file_digest(path: Path) -> str:
    return _hash_file(path, xxhash.xxh3_128())


def record_batch_digest(batch: pa.RecordBatch) -> str:
    """xxh3-64 over every data buffer of a record batch as a reader sees it: the cheap per-batch integrity check."""
    h = xxhash.xxh3_64()
    for column in batch.columns:
        for buf in column.buffers():
            if buf is not None:
                h.update(memoryview(buf))
    return h.hexdigest()


def shard_batch_digests(path: Path) -> list[str]:
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    return [record_batch_digest(reader.get_batch(i)) for i in range(reader.num_record_batches)]


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_compatible(
    manifest: dict,
    *,
    cache_dir: Path | str = "cache",
    tokenizer_fingerprint: str | None = None,
    max_length: int | None = None,
    label_names: list[str] | None = None,
    layers: list[int] | None = None,
    attentions: list[int] | None = None,
    values: list[int] | None = None,
    rank: int | None = ...,
) -> None:
    """Refuse a cache that does not match what the consumer expects, before any training step. `rank` (extract.rank:
    None = full width) is checked when given."""
    where = Path(cache_dir) / MANIFEST
    fix = "rerun `dvc repro extract` with matching params, or point the student at the right cache"
    if rank is not ... and manifest.get("rank") != rank:
        held = f"rank-{manifest['rank']} hidden states" if manifest.get("rank") else "full-width hidden states"
        raise PipelineError(f"{where}: the cache holds {held} but extract.rank is {rank}; {fix}")
    if tokenizer_fingerprint is not None and manifest["tokenizer"]["fingerprint"] != tokenizer_fingerprint:
        raise PipelineError(
            f"{where}: cache was tokenized with a different tokenizer (fingerprint "
            f"{manifest['tokenizer']['fingerprint'][:12]} vs {tokenizer_fingerprint[:12]}); {fix}"
        )
    if max_length is not None and manifest["max_length"] != max_length:
        raise PipelineError(f"{where}: cache max_length is {manifest['max_length']} but data.max_length is {max_length}; {fix}")
    if label_names is not None and list(manifest["label_names"]) != list(label_names):
        raise PipelineError(f"{where}: cache labels are {manifest['label_names']} but data.label_names is {label_names}; {fix}")
    if layers is not None:
        missing = [layer for layer in layers if layer not in manifest["layers"]]
        if missing:
            raise PipelineError(
                f"{where}: teacher layers {missing} are needed but the cache holds {manifest['layers']}; add "
                f"them to extract.layers and rerun extract, or set the hidden-state weight gamma to 0"
            )
    for wanted, key, weight in ((attentions, "attentions", "attention_weight"), (values, "values", "value_weight")):
        held = manifest.get(key, [])
        missing = [layer for layer in (wanted or []) if layer not in held]
        if missing:
            raise PipelineError(
                f"{where}: teacher {key} of layers {missing} are needed but the cache holds {held}; add them to "
                f"extract.{key} and rerun extract, or set {weight} to 0"
            )
