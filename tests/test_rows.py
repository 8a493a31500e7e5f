"""Batched reads: a batch read at once (`CacheSplit.__getitems__` -> `Rows`) collates to exactly the tensors the same
rows read one at a time give, in every stored dtype, across shards and splits, with extra teachers and attention maps."""

import numpy as np
import pytest
import torch

from pipeline.cache import TeacherCache
from pipeline.cache.rows import Rows
from pipeline.collate import CacheCollator, ConcatSplits
from pipeline.teachers import join_teachers
from tests.conftest import build_cache


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module", params=["float16", "bfloat16", "int8"])
def cache(request, tmp_path_factory, tiny_teacher, tiny_prepared):
    out = tmp_path_factory.mktemp(f"rows-{request.param}") / "cache"
    build_cache(tiny_teacher, tiny_prepared, out, dtype=request.param, attentions=(2,), values=(4,))
    return TeacherCache(out)


def test_a_batch_read_at_once_collates_as_rows_read_one_by_one(cache):
    split = cache.split("train", ["logits", "hidden_2", "hidden_4", "attention_2", "value_4"])
    assert len(split.shard_paths) > 1  # rows from several shards and record batches in one batch
    collate = CacheCollator([2, 4], 0, attentions=[2], values=[4])
    rng = np.random.default_rng(0)
    for size in (1, 7, 64):
        index = rng.choice(len(split), size, replace=False).tolist()
        rows = split.__getitems__(index)
        assert isinstance(rows, Rows) and rows.lengths.tolist() == [split[i]["length"] for i in index]
        _same(collate(rows), collate([split[i] for i in index]))
    _same(collate(split.__getitems__([-1, 0])), collate([split[len(split) - 1], split[0]]))
    with pytest.raises(IndexError, match="out of range"):
        split.__getitems__([0, len(split)])


def test_a_batch_across_splits_keeps_its_order(cache):
    train, dev = cache.split("train", ["logits", "hidden_2"]), cache.split("dev", ["logits", "hidden_2"])
    both = ConcatSplits([train, dev])
    index = [len(train) + 3, 0, len(train), 5, len(train) + 1]
    rows = both.__getitems__(index)
    _same(CacheCollator([2])(rows), CacheCollator([2])([both[i] for i in index]))
    assert rows.stacked("example_id", torch.long).tolist() == [both[i]["example_id"] for i in index]


def test_extra_teachers_logits_join_a_batch_read_at_once(cache):
    joined = join_teachers(cache.split("train", ["logits", "hidden_2"]), [cache], "logits")
    index = [4, 1, 9]
    rows = joined.__getitems__(index)
    batch = CacheCollator([2])(rows)
    _same(batch, CacheCollator([2])([joined[i] for i in index]))
    assert batch["teacher_extra_logits"].shape == (3, 1, 2)
    assert torch.equal(batch["teacher_extra_logits"][:, 0], batch["teacher_logits"])  # the same cache, joined by id


def test_hidden_states_reach_the_loss_in_their_stored_precision(cache, request):
    """fp16 / bf16 hidden states and values stay 2 bytes a value in the batch (half the copy and the transfer) and
    equal, as fp32, the fp32 padding of the same rows; int8 ones are dequantized to fp32."""
    stored = request.node.callspec.params["cache"]
    split = cache.split("train", ["logits", "hidden_2", "value_4"])
    rows = split.__getitems__([3, 0, 7])
    batch = CacheCollator([2], 0, values=[4])(rows)
    want = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float32}[stored]
    width = int(rows.lengths.max())
    for name in ("hidden_2", "value_4"):
        got = batch[f"teacher_{name}"]
        assert got.dtype == want, name
        assert torch.equal(got.float(), rows.padded(name, width, 0.0, torch.float32)), name
        assert not got[batch["attention_mask"] == 0].any(), name  # zero where padded


def test_stage_two_keeps_freed_host_memory_unless_the_user_set_the_allocator(monkeypatch):
    """glibc reuses freed batches' pages (no fresh page faults per step); a user's own malloc settings win."""
    import platform

    from pipeline.collate import keep_freed_host_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert keep_freed_host_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    assert keep_freed_host_memory() is True
