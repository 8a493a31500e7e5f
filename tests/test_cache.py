"""The cache contract: bit-exact ragged round-trips, atomic shards, manifest checks."""

import hashlib
import json

import numpy as np
import pytest
import torch
import xxhash

from pipeline.cache import CacheBatch, CacheWriter, FieldSpec, TeacherCache, check_compatible, read_manifest
from pipeline.cache.schema import FORMAT_VERSION, file_digest
from pipeline.errors import PipelineError
from tests.conftest import flip_middle_byte

LENGTHS = [7, 1, 12, 3, 30, 5]
HIDDEN = 8


def _rows(dtype: str, seed: int = 0):
    """Random ragged rows; hidden values are drawn in fp32 and rounded to the storage dtype (as extraction does)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(LENGTHS):
        h = torch.from_numpy(rng.standard_normal((n, HIDDEN)).astype(np.float32) * 10)
        stored = h.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else h.half().numpy()
        att = rng.random((2, n, n)).astype(np.float16)
        rows.append(
            {
                "example_id": 100 + i,
                "length": n,
                "label": i % 2,
                "input_ids": rng.integers(0, 500, n).astype(np.int32),
                "logits": rng.standard_normal(2).astype(np.float32),
                "hidden_3": stored,
                "attention_3": att,
                "source": h,
            }
        )
    return rows


def _write(cache_dir, rows, dtype, rows_per_batch=2, shard_max_bytes=1 << 20):
    fields = [
        FieldSpec("logits", "example", "float32", 2),
        FieldSpec("hidden_3", "token", dtype, HIDDEN),
        FieldSpec("attention_3", "token_pair", "float16", 2),
    ]
    meta = {
        "layers": [3],
        "label_names": ["a", "b"],
        "max_length": 64,
        "tokenizer": {"fingerprint": "t" * 64},
        "hidden_size": HIDDEN,
    }
    with CacheWriter(cache_dir, fields, meta, shard_max_bytes) as writer:
        for i in range(0, len(rows), rows_per_batch):
            chunk = rows[i : i + rows_per_batch]
            writer.write(
                "train",
                CacheBatch(
                    example_id=np.array([r["example_id"] for r in chunk]),
                    length=np.array([r["length"] for r in chunk]),
                    label=np.array([r["label"] for r in chunk]),
                    input_ids=np.concatenate([r["input_ids"] for r in chunk]),
                    fields={
                        "logits": np.stack([r["logits"] for r in chunk]),
                        "hidden_3": np.concatenate([r["hidden_3"] for r in chunk]),
                        "attention_3": np.concatenate([r["attention_3"].ravel() for r in chunk]),
                    },
                ),
            )
        return writer.close()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shard_max_bytes", [1 << 20, 600])
def test_round_trip_is_bit_exact(tmp_path, dtype, shard_max_bytes):
    rows = _rows(dtype)
    manifest = _write(tmp_path, rows, dtype, shard_max_bytes=shard_max_bytes)
    split = TeacherCache(tmp_path).split("train")
    assert len(split) == len(rows) == manifest["splits"]["train"]["rows"]
    if shard_max_bytes == 600:
        assert len(manifest["splits"]["train"]["shards"]) > 1
    for i, want in enumerate(rows):
        got = split[i]
        assert got["example_id"] == want["example_id"] and got["length"] == want["length"] and got["label"] == want["label"]
        assert got["hidden_3"].shape == (want["length"], HIDDEN)
        assert got["attention_3"].shape == (2, want["length"], want["length"])
        for key in ("input_ids", "logits", "hidden_3", "attention_3"):
            assert got[key].dtype == want[key].dtype
            assert got[key].tobytes() == want[key].tobytes(), key
    np.testing.assert_array_equal(split.lengths(), LENGTHS)
    assert manifest["splits"]["train"]["tokens"] == sum(LENGTHS)


def test_bf16_bits_reinterpret_to_the_original_bf16_values(tmp_path):
    rows = _rows("bfloat16")
    _write(tmp_path, rows, "bfloat16")
    got = TeacherCache(tmp_path).split("train")[2]["hidden_3"]
    as_bf16 = torch.from_numpy(got.view(np.int16).copy()).view(torch.bfloat16)
    assert torch.equal(as_bf16, rows[2]["source"].to(torch.bfloat16))
    assert not torch.equal(as_bf16.float(), rows[2]["source"])  # bf16 really rounded: the check above is not vacuous


def test_rows_are_zero_copy_views_of_the_mapping(tmp_path):
    _write(tmp_path, _rows("float16"), "float16")
    row = TeacherCache(tmp_path).split("train")[0]
    assert not row["hidden_3"].flags.writeable  # a view into the read-only memory map, not a copy
    assert not row["hidden_3"].flags.owndata


def test_no_temporary_files_and_manifest_lists_every_shard_with_checksums(tmp_path):
    manifest = _write(tmp_path, _rows("float16"), "float16", shard_max_bytes=600)
    on_disk = sorted(p.name for p in tmp_path.iterdir())
    listed = sorted(s["file"] for s in manifest["splits"]["train"]["shards"])
    assert on_disk == sorted(listed + ["manifest.json"])
    assert manifest["format_version"] == FORMAT_VERSION
    assert all(len(s["xxh3_128"]) == 32 for s in manifest["splits"]["train"]["shards"])


def test_failed_write_leaves_no_manifest_and_no_partial_shard(tmp_path):
    rows = _rows("float16")
    fields = [FieldSpec("logits", "example", "float32", 2)]
    with pytest.raises(RuntimeError):
        with CacheWriter(tmp_path, fields, {}) as writer:
            writer.write(
                "train",
                CacheBatch(
                    np.array([1]), np.array([3]), np.array([0]), np.arange(3, dtype=np.int32), {"logits": rows[0]["logits"][None]}
                ),
            )
            raise RuntimeError("killed mid-extraction")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_keeps_every_closed_shard_even_when_its_hash_is_still_queued(tmp_path, monkeypatch):
    """A closed shard is complete data: a write error on a later shard must not cancel its queued hashing (it did,
    under CPU load, and a rerun then redid those batches)."""
    import errno
    import threading

    import pyarrow as pa

    from pipeline.cache import writer as writer_module

    rows = _rows("float16")
    fields = [FieldSpec("logits", "example", "float32", 2)]
    gate, real_finish = threading.Event(), writer_module._finish_shard

    def slow_finish(*args):  # the single hashing thread is busy until the disk has filled
        gate.wait(5)
        return real_finish(*args)

    real_osfile = pa.OSFile

    def filling_disk(path, mode="rb"):  # the fourth shard finds the disk full
        if "train-00003" in str(path):
            gate.set()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_osfile(path, mode)

    monkeypatch.setattr(writer_module, "_finish_shard", slow_finish)
    monkeypatch.setattr(pa, "OSFile", filling_disk)
    writer = CacheWriter(tmp_path, fields, {}, shard_max_bytes=1, hash_threads=1)  # one row per shard
    finished = []  # what the writer hands back as done (the extractor journals it): from writes, then from salvage
    with pytest.raises(PipelineError, match=r"could not write a train shard \(No space left on device\)"):
        for i in range(4):
            finished += writer.write(
                "train",
                CacheBatch(
                    np.array([i]), np.array([3]), np.array([0]), np.arange(3, dtype=np.int32), {"logits": rows[i]["logits"][None]}
                ),
                tag=i + 1,
            )
        writer.close()
    finished += writer.salvage()["train"]
    assert [(record["file"], tag) for record, tag in finished] == [(f"train-0000{i}.arrow", i + 1) for i in range(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [record["file"] for record, _ in finished]


def test_a_failure_inside_arrow_surfaces_and_publishes_nothing(tmp_path, monkeypatch):
    import pyarrow as pa

    real_new_file, writes = pa.ipc.new_file, []

    class Failing:  # the third batch written anywhere fails with a non-OS error
        def __init__(self, sink, schema):
            self.inner = real_new_file(sink, schema)

        def write_batch(self, batch):
            writes.append(batch.num_rows)
            if len(writes) == 3:
                raise ValueError("arrow refused the batch")
            self.inner.write_batch(batch)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(pa.ipc, "new_file", Failing)
    with pytest.raises(ValueError, match="arrow refused the batch"):
        _write(tmp_path, _rows("float16") * 4, "float16", rows_per_batch=1, shard_max_bytes=1 << 20)
    assert not (tmp_path / "manifest.json").exists() and not list(tmp_path.glob(".*.tmp"))


def test_flipped_byte_is_caught_with_full_verification_only(tmp_path):
    manifest = _write(tmp_path, _rows("float16"), "float16")
    shard = tmp_path / manifest["splits"]["train"]["shards"][0]["file"]
    flip_middle_byte(shard)
    TeacherCache(tmp_path, verify="size")  # same size: the cheap check cannot see it
    with pytest.raises(PipelineError, match=r"train-00000\.arrow.*checksum.*dvc pull"):
        TeacherCache(tmp_path, verify="full")


def test_the_fast_digest_catches_every_single_bit_flip_sha256_catches(tmp_path):
    """xxh3-128 replaced sha256 as the shard digest: over every byte of a real shard, a flipped bit changes both."""
    manifest = _write(tmp_path, _rows("float16"), "float16")
    record = manifest["splits"]["train"]["shards"][0]
    clean = (tmp_path / record["file"]).read_bytes()
    assert file_digest(tmp_path / record["file"]) == record["xxh3_128"] == xxhash.xxh3_128(clean).hexdigest()
    sha = hashlib.sha256(clean).hexdigest()
    for at in range(len(clean)):
        for bit in (0, 7):
            data = bytearray(clean)
            data[at] ^= 1 << bit
            assert xxhash.xxh3_128(bytes(data)).hexdigest() != record["xxh3_128"], (at, bit)
            assert hashlib.sha256(bytes(data)).hexdigest() != sha


def test_missing_or_truncated_shard_is_refused(tmp_path):
    manifest = _write(tmp_path, _rows("float16"), "float16")
    shard = tmp_path / manifest["splits"]["train"]["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(PipelineError, match="bytes, manifest says"):
        TeacherCache(tmp_path, verify="size")
    shard.unlink()
    with pytest.raises(PipelineError, match="missing"):
        TeacherCache(tmp_path, verify="size")


@pytest.mark.parametrize("name", ["../evil.arrow", "/etc/passwd", "sub/../../x.arrow", "a/b.arrow"])
def test_shard_names_escaping_the_cache_are_refused(tmp_path, name):
    manifest = _write(tmp_path, _rows("float16"), "float16")
    manifest["splits"]["train"]["shards"][0]["file"] = name
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match="outside the cache directory"):
        TeacherCache(tmp_path, verify="none").split("train")


def test_older_format_version_is_refused_with_the_fix(tmp_path):
    manifest = _write(tmp_path, _rows("float16"), "float16")
    manifest["format_version"] = FORMAT_VERSION - 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match="format version .* rerun the extract stage"):
        read_manifest(tmp_path)


def test_missing_manifest_names_the_stage_to_run(tmp_path):
    with pytest.raises(PipelineError, match="manifest.json: no cache manifest; run `dvc repro extract`"):
        TeacherCache(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tokenizer_fingerprint": "x" * 64}, "different tokenizer"),
        ({"max_length": 128}, "max_length is 64 but data.max_length is 128"),
        ({"label_names": ["neg", "pos"]}, "labels are"),
        ({"layers": [3, 5]}, r"teacher layers \[5\] are needed"),
    ],
)
def test_check_compatible_refuses_each_mismatch(tmp_path, kwargs, message):
    manifest = _write(tmp_path, _rows("float16"), "float16")
    check_compatible(manifest, tokenizer_fingerprint="t" * 64, max_length=64, label_names=["a", "b"], layers=[3])
    with pytest.raises(PipelineError, match=message):
        check_compatible(manifest, cache_dir=tmp_path, **kwargs)


def test_flipped_byte_stops_lazy_reads_at_the_batch_that_holds_it(tmp_path):
    manifest = _write(tmp_path, _rows("float16"), "float16", rows_per_batch=2)
    shard = tmp_path / manifest["splits"]["train"]["shards"][0]["file"]
    split = TeacherCache(tmp_path, verify="lazy").split("train")
    clean = [split[i]["hidden_3"].tobytes() for i in range(len(split))]
    # flip one byte inside row 4's hidden state (batch 2): find it by its bytes in the file
    data = bytearray(shard.read_bytes())
    at = bytes(data).find(clean[4][:16])
    assert at > 0
    data[at + 3] ^= 0x01
    shard.write_bytes(bytes(data))
    split = TeacherCache(tmp_path, verify="lazy").split("train")  # sizes still match: opening is fine
    for i in range(4):
        split[i]  # batches 0 and 1 are intact
    with pytest.raises(PipelineError, match=r"train-00000\.arrow: record batch 2 does not match its checksum.*dvc pull"):
        split[4]
    unchecked = TeacherCache(tmp_path, verify="size").split("train")
    assert unchecked[4]["hidden_3"].tobytes() != clean[4]  # the flip is real: only the checksum stood between it and training


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[]", "manifest is a JSON list, not an object"),
        (json.dumps({"format_version": FORMAT_VERSION}).encode(), "manifest lacks or mistypes fields, splits"),
        (b"\xff\xfe{}", "manifest is not UTF-8 text"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_error_naming_the_fix(tmp_path, content, message):
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(PipelineError, match=message + r".*rerun the extract stage .*or `dvc pull` the cache"):
        TeacherCache(tmp_path)


def test_a_manifest_without_a_fields_list_is_refused(tmp_path):
    manifest = _write(tmp_path, _rows("float16"), "float16")
    del manifest["fields"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match="lacks or mistypes fields"):
        TeacherCache(tmp_path)


def test_the_planned_batch_size_is_the_record_batch_arrow_builds(tmp_path):
    """Shards close by `batch_nbytes`, computed before the teacher runs; it must equal the `nbytes` of the record batch
    the writer builds (what shards closed by before), for every field kind and dtype, so one-process caches keep their
    bytes and torchrun ranks can be cut where a shard closes."""
    import pyarrow as pa

    from pipeline.cache import CacheBatch, CacheWriter, FieldSpec
    from pipeline.cache.layout import batch_nbytes, shard_ends
    from pipeline.cache.schema import STORAGE

    fields = [
        FieldSpec("logits", "example", "float32", 3),
        FieldSpec("h", "token", "float16", 8),
        FieldSpec("q", "token", "int8", 8),
        FieldSpec("q_scale", "token", "float16", 1),
        FieldSpec("att", "token_pair", "float16", 4),
        FieldSpec("idx", "token", "uint16", 5),
        FieldSpec("lab", "token", "int32", 1),
        FieldSpec("bf", "token", "bfloat16", 3),
    ]
    rng = np.random.default_rng(0)
    writer = CacheWriter(tmp_path / "c", fields, {})
    for _ in range(30):
        lengths = rng.integers(1, 40, size=rng.integers(1, 30))
        rows, tokens, pairs = len(lengths), int(lengths.sum()), int((lengths * lengths).sum())
        size = {"example": rows, "token": tokens, "token_pair": pairs}
        values = {f.name: np.zeros(size[f.kind] * f.width, dtype=STORAGE[f.dtype][1]) for f in fields}
        batch = CacheBatch(np.arange(rows), lengths, np.zeros(rows, np.int64), np.zeros(tokens, np.int32), values)
        built: pa.RecordBatch = writer._record_batch(batch)
        assert built.nbytes == batch_nbytes(fields, lengths)
    writer.abort()
    assert shard_ends([5, 5, 5, 5, 5], 10) == [2, 4, 5] and shard_ends([20], 10) == [1] and shard_ends([], 10) == [0]
