"""Low-rank hidden states (extract.rank): the basis, the coefficients the cache holds, and stage two's use of them."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from pipeline.cache import TeacherCache, check_compatible
from pipeline.cache.basis import BasisFit, project, reconstruct
from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_student
from pipeline.errors import PipelineError
from tests.conftest import build_cache, flip_middle_byte

FAST = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=2)


def test_a_known_low_rank_input_is_rebuilt_exactly_and_explained_in_full():
    gen = torch.Generator().manual_seed(0)
    directions, _ = torch.linalg.qr(torch.randn(32, 4, generator=gen))
    x = 3.0 + torch.randn(500, 4, generator=gen) * torch.tensor([5.0, 3.0, 2.0, 1.0]) @ directions.T
    fit = BasisFit(32, torch.device("cpu"))
    fit.add(x[:200])
    fit.add(x[200:])  # sums over several batches are the sums over all
    mean, components, explained = fit.basis(4)
    mean, components = torch.from_numpy(mean), torch.from_numpy(components)
    assert explained == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(components.T @ components, torch.eye(4), atol=1e-5)
    assert (reconstruct(project(x, mean, components), mean, components) - x).abs().max() < 1e-4
    # fewer directions than the data has: the variance left out is what the smallest direction carried
    _, _, three = fit.basis(3)
    assert three == pytest.approx(1 - 1 / (25 + 9 + 4 + 1), abs=0.03)


def test_the_basis_is_deterministic_for_a_seed_and_stored_under_the_caches_digests(tiny_teacher, tiny_prepared, tmp_path):
    a = build_cache(tiny_teacher, tiny_prepared, tmp_path / "a", rank=8, rank_sample_rows=60, seed=1)["manifest"]
    b = build_cache(tiny_teacher, tiny_prepared, tmp_path / "b", rank=8, rank_sample_rows=60, seed=1)["manifest"]
    c = build_cache(tiny_teacher, tiny_prepared, tmp_path / "c", rank=8, rank_sample_rows=60, seed=2)["manifest"]
    assert a["tables"]["basis"] == b["tables"]["basis"] and a["splits"] == b["splits"]
    assert a["tables"]["basis"]["xxh3_128"] != c["tables"]["basis"]["xxh3_128"]  # another sample, another basis
    assert a["rank"] == 8 and a["basis"]["sample_rows"] == 60 and set(a["basis"]["explained_variance"]) == {"2", "4"}
    assert all(0 < v <= 1 for v in a["basis"]["explained_variance"].values())
    widths = {f["name"]: f["width"] for f in a["fields"]}
    assert widths["hidden_2"] == widths["hidden_4"] == 8 and widths["logits"] == 2


def test_coefficients_rebuild_the_teachers_hidden_states(tiny_teacher, tiny_prepared, tmp_path):
    """At full rank the rebuilt states are the teacher's to fp16 precision; at rank 8 of 32 the error is what the
    basis leaves out, about sqrt(1 - explained variance) of the states' spread."""
    splits, _ = tiny_prepared
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher).eval()
    by_id = {row["example_id"]: row for row in splits["train"]}
    for rank in (32, 8):
        manifest = build_cache(tiny_teacher, tiny_prepared, tmp_path / str(rank), rank=rank)["manifest"]
        cache = TeacherCache(tmp_path / str(rank))
        bases = {layer: tuple(torch.from_numpy(a) for a in pair) for layer, pair in cache.bases().items()}
        train, errors, spread = cache.split("train"), [], []
        for index in range(0, len(train), 7):
            row = train[index]
            with torch.no_grad():
                out = model(input_ids=torch.tensor([by_id[row["example_id"]]["input_ids"]]), output_hidden_states=True)
            for layer in (2, 4):
                truth = out.hidden_states[layer][0]
                rebuilt = reconstruct(torch.from_numpy(row[f"hidden_{layer}"].astype(np.float32)), *bases[layer])
                errors.append(((rebuilt - truth) ** 2).mean())
                spread.append(((truth - bases[layer][0]) ** 2).mean())
        relative = (torch.stack(errors).mean() / torch.stack(spread).mean()).sqrt().item()
        left_out = 1 - min(manifest["basis"]["explained_variance"].values())
        if rank == 32:
            assert relative < 2e-3
        else:
            assert 0 < relative < 2 * left_out**0.5


def test_flipped_bytes_in_the_basis_are_caught(tiny_teacher, tiny_prepared, tmp_path):
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "cache", rank=4)
    path = tmp_path / "cache" / "table-basis.arrow"
    flip_middle_byte(path)
    with pytest.raises(PipelineError, match="table-basis.arrow: the cache's 'basis' table is missing or does not match"):
        TeacherCache(tmp_path / "cache").bases()


def test_a_cache_of_another_rank_is_refused_with_the_fix(tiny_teacher, tiny_prepared, tiny_cache, tmp_path):
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "cache", rank=4)
    low = TeacherCache(tmp_path / "cache").manifest
    full = TeacherCache(tiny_cache).manifest
    check_compatible(low, rank=4)
    check_compatible(full, rank=None)
    with pytest.raises(PipelineError, match=r"holds rank-4 hidden states but extract.rank is 8; rerun `dvc repro extract`"):
        check_compatible(low, rank=8)
    with pytest.raises(PipelineError, match="holds full-width hidden states but extract.rank is 4"):
        check_compatible(full, rank=4)
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    with pytest.raises(PipelineError, match="extract.rank is None"):
        distill_student(tmp_path / "cache", tmp_path / "s", spec, FAST, seed=0, rank=None)
    with pytest.raises(PipelineError, match="extract.rank 64 is more than the teacher's hidden size 32"):
        build_cache(tiny_teacher, tiny_prepared, tmp_path / "too-wide", rank=64)


def test_a_student_trains_from_a_low_rank_cache_as_from_a_full_width_one(tiny_teacher, tiny_prepared, tiny_cache, tmp_path):
    """The hidden loss is computed at full width against the rebuilt states: at full rank it is the fp16 cache's
    loss to rounding, and the student's projection keeps its shape (32 -> the teacher's 32, never the rank)."""
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "full-rank", rank=32)
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "rank-4", rank=4, dtype="int8")
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    cfg = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=1, gamma=1.0)
    runs = {
        name: distill_student(cache, tmp_path / f"s-{name}", spec, cfg, seed=0)
        for name, cache in (("fp16", tiny_cache), ("full-rank", tmp_path / "full-rank"), ("rank-4", tmp_path / "rank-4"))
    }
    hidden = {name: [h["loss_hidden"] for h in run["history"] if "loss_hidden" in h] for name, run in runs.items()}
    assert hidden["fp16"] and len(hidden["fp16"]) == len(hidden["full-rank"]) == len(hidden["rank-4"])
    np.testing.assert_allclose(hidden["full-rank"], hidden["fp16"], rtol=2e-3)
    assert all(np.isfinite(hidden["rank-4"])) and hidden["rank-4"] != hidden["fp16"]
    assert (tmp_path / "s-rank-4" / "model.safetensors").is_file()
