"""Stage one on a tiny random teacher and real SST-2 rows: what lands in the cache is what the teacher said."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from pipeline.cache import TeacherCache
from pipeline.errors import PipelineError
from pipeline.extract_loop import length_sorted_batches, pad_rows
from pipeline.layers import normalize_layers
from tests.conftest import build_cache


def test_cache_holds_the_teachers_outputs_for_real_tokens_only(tiny_teacher, tiny_prepared, tiny_cache):
    splits, _ = tiny_prepared
    cache = TeacherCache(tiny_cache)
    assert cache.layers == [2, 4] and cache.manifest["dtype"] == "float16"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    train = cache.split("train")
    by_id = {row["example_id"]: row for row in splits["train"]}
    assert len(train) == len(by_id) and sorted(train.column("example_id")) == sorted(by_id)
    for index in (0, len(train) // 2, len(train) - 1):
        row = train[index]
        source = by_id[row["example_id"]]
        assert row["input_ids"].tolist() == source["input_ids"] and row["label"] == source["label"]
        with torch.no_grad():  # alone, unpadded: padding in the extraction batch must not change anything
            out = model(input_ids=torch.tensor([source["input_ids"]]), output_hidden_states=True)
        np.testing.assert_allclose(row["logits"], out.logits[0].numpy(), rtol=1e-4, atol=1e-5)
        for layer in (2, 4):
            assert row[f"hidden_{layer}"].shape == (source["length"], 32)
            np.testing.assert_allclose(
                row[f"hidden_{layer}"].astype(np.float32), out.hidden_states[layer][0].numpy(), rtol=2e-3, atol=2e-3
            )


def test_manifest_records_the_contract(tiny_cache, tiny_prepared):
    manifest = TeacherCache(tiny_cache).manifest
    _, info = tiny_prepared
    for key in (
        "format_version",
        "teacher",
        "tokenizer",
        "max_length",
        "layers",
        "hidden_size",
        "dtype",
        "label_names",
        "dataset",
        "splits",
        "fields",
    ):
        assert key in manifest, key
    assert manifest["dataset"]["train"] == info["splits"]["train"]["fingerprint"]
    assert len(manifest["teacher"]["fingerprint"]) == 64 and manifest["teacher"]["num_hidden_layers"] == 4
    assert len(manifest["splits"]["train"]["shards"]) > 1  # 64 KiB shard limit in the fixture: rotation happened
    assert (tiny_cache / "tokenizer" / "tokenizer.json").is_file() or (tiny_cache / "tokenizer" / "vocab.txt").is_file()


def test_extraction_is_deterministic_and_bf16_is_supported(tiny_teacher, tiny_prepared, tmp_path):
    a = build_cache(tiny_teacher, tiny_prepared, tmp_path / "a", dtype="bfloat16")
    b = build_cache(tiny_teacher, tiny_prepared, tmp_path / "b", dtype="bfloat16")
    shas = lambda m: [s["xxh3_128"] for sp in m["manifest"]["splits"].values() for s in sp["shards"]]  # noqa: E731
    assert shas(a) == shas(b)
    row = TeacherCache(tmp_path / "a").split("dev")[0]
    assert row["hidden_2"].dtype == np.uint16


def test_extract_report_has_sizes_padding_and_writer_timings(tiny_teacher, tiny_prepared, tmp_path):
    import json

    from pipeline.extract import write_extract_report

    result = build_cache(tiny_teacher, tiny_prepared, tmp_path / "cache")
    write_extract_report(tmp_path / "extract.json", result)
    report = json.loads((tmp_path / "extract.json").read_text())
    lengths = {name: np.array(ds["length"]) for name, ds in tiny_prepared[0].items()}
    for name, split in report["splits"].items():
        # batches of 16 in length order: padding = what each batch pads to its longest row
        order = length_sorted_batches(lengths[name], 16)
        padded = sum(len(b) * lengths[name][b].max() for b in order)
        assert split["padding_fraction"] == pytest.approx(1 - lengths[name].sum() / padded)
        assert split["tokens"] == lengths[name].sum()
    assert report["bytes"] == sum(f.stat().st_size for f in (tmp_path / "cache").glob("*.arrow"))
    assert report["tokens"] == sum(len_.sum() for len_ in lengths.values())
    assert set(report["writer"]) == {"busy_s", "producer_wait_s", "tail_s"} and report["writer"]["busy_s"] > 0


def test_length_sorting_cuts_padding(tiny_prepared):
    lengths = np.array(tiny_prepared[0]["train"]["length"])
    sorted_pad = sum(len(b) * lengths[b].max() for b in length_sorted_batches(lengths, 16)) / lengths.sum() - 1
    naive_pad = sum(16 * lengths[i : i + 16].max() for i in range(0, len(lengths), 16)) / lengths.sum() - 1
    assert sorted_pad < naive_pad / 3
    batches = length_sorted_batches(lengths, 16)
    assert sorted(np.concatenate(batches)) == list(range(len(lengths)))


def test_pad_rows_matches_a_row_by_row_copy():
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 9, size=7)
    flat = rng.integers(5, 1000, size=int(lens.sum())).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    order = np.array([6, 2, 0, 5])  # any subset of rows, in any order
    width = int(lens[order].max())
    ids, mask = pad_rows(flat, starts[order], lens[order], width, pad_id=3)
    for j, r in enumerate(order):
        assert ids[j, : lens[r]].tolist() == flat[starts[r] : starts[r] + lens[r]].tolist()
        assert (ids[j, lens[r] :] == 3).all() and mask[j].sum() == lens[r] and mask[j, : lens[r]].all()
    assert ids.dtype == np.int64 and ids.shape == (4, width)


def test_layer_indices(tiny_teacher):
    assert normalize_layers([-1, 0, 2, 2], 4) == [0, 2, 4]
    with pytest.raises(PipelineError, match=r"extract.layers has 5, out of range: .* 0 \(embeddings\) .. 4"):
        normalize_layers([5], 4)
    with pytest.raises(PipelineError, match="extract.layers has -6"):
        normalize_layers([-6], 4)


def test_int8_cache_dequantizes_within_half_a_step_at_hidden_plus_2_bytes(tiny_teacher, tiny_prepared, tmp_path):
    from pipeline.cache.codec import quantize_int8

    x = torch.randn(50, 32) * torch.logspace(-2, 2, 50)[:, None]  # tokens of very different magnitudes
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and q.abs().max() <= 127
    err = (q.float() * scale.float() - x).abs()
    assert torch.all(err <= scale.float() / 2 + 1e-6)

    fp16 = build_cache(tiny_teacher, tiny_prepared, tmp_path / "fp16", dtype="float16")["manifest"]
    int8 = build_cache(tiny_teacher, tiny_prepared, tmp_path / "int8", dtype="int8")["manifest"]
    tokens = sum(s["tokens"] for s in fp16["splits"].values())
    per_token_layer = (fp16["bytes"] - int8["bytes"]) / tokens / 2  # two cached layers
    # fp16 2H vs int8 H + 2 (scale): saves H - 2 bytes per token per layer, less the scale column's row offsets
    assert per_token_layer == pytest.approx((2 * 32) - (32 + 2), rel=0.05)
    a, b = TeacherCache(tmp_path / "fp16").split("train"), TeacherCache(tmp_path / "int8").split("train")
    assert "hidden_2_scale" not in b[0]
    for i in (0, 7, len(a) - 1):
        ref, deq = a[i]["hidden_2"].astype(np.float32), b[i]["hidden_2"]
        assert deq.dtype == np.float32 and deq.shape == ref.shape
        step = np.abs(ref).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(deq - ref) <= step * 0.51 + 2e-3)  # half a step (+ the fp16 rounding of the reference)


def test_attention_maps_and_values_are_cached_for_real_tokens_only(tiny_teacher, tiny_prepared, tmp_path):
    splits, _ = tiny_prepared
    manifest = build_cache(tiny_teacher, tiny_prepared, tmp_path / "c", attentions=[2, -1], values=[4])["manifest"]
    assert (manifest["attentions"], manifest["values"], manifest["num_heads"]) == ([2, 4], [4], 4)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher, attn_implementation="eager").eval()
    captured = {}
    model.bert.encoder.layer[3].attention.self.value.register_forward_hook(lambda m, a, out: captured.__setitem__("v", out))
    by_id = {row["example_id"]: row for row in splits["train"]}
    split = TeacherCache(tmp_path / "c").split("train")
    for index in (0, len(split) - 1):
        row = split[index]
        n = row["length"]
        with torch.no_grad():
            out = model(input_ids=torch.tensor([by_id[row["example_id"]]["input_ids"]]), output_attentions=True)
        assert row["attention_2"].shape == (4, n, n) and row["value_4"].shape == (n, 32)
        np.testing.assert_allclose(row["attention_2"].astype(np.float32), out.attentions[1][0].numpy(), atol=1e-3)
        np.testing.assert_allclose(row["attention_4"].astype(np.float32).sum(-1), np.ones((4, n)), atol=5e-3)
        np.testing.assert_allclose(row["value_4"].astype(np.float32), captured["v"][0].numpy(), rtol=2e-3, atol=2e-3)
    hidden_only = build_cache(tiny_teacher, tiny_prepared, tmp_path / "h")["manifest"]
    extra = manifest["bytes"] - hidden_only["bytes"]
    tokens_sq = sum(int(n) ** 2 for ds in splits.values() for n in ds["length"])
    tokens = sum(int(n) for ds in splits.values() for n in ds["length"])
    assert extra == pytest.approx(2 * (2 * 4 * tokens_sq) + 2 * 32 * tokens, rel=0.05)  # 2 maps x heads x len^2 x 2 B + values
    with pytest.raises(PipelineError, match=r"extract.attentions has 5, out of range: the teacher has layers 1 .. 4"):
        build_cache(tiny_teacher, tiny_prepared, tmp_path / "x", attentions=[5])
