"""Compact attention and value relations (extract.relations: inputs): the cache keeps each relation layer's input and
its projections, and stage two recomputes the maps and values the MiniLM losses compare."""

import numpy as np
import pytest
import torch

from pipeline.cache import TeacherCache
from pipeline.cache.basis import reconstruct
from pipeline.cache.relations import attention_from_input, values_from_input
from pipeline.config import DistillConfig, StudentSpec
from pipeline.distill import distill_student
from pipeline.errors import PipelineError
from tests.conftest import build_cache, flip_middle_byte

RELATIONS = {"attentions": [2, 4], "values": [4]}


def _projection(layer: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(layer[f"{name}_weight"]), torch.from_numpy(layer[f"{name}_bias"])


def _shard_bytes(manifest: dict) -> int:
    return sum(s["bytes"] for split in manifest["splits"].values() for s in split["shards"])


def test_the_layer_inputs_rebuild_the_teachers_maps_and_values(tiny_teacher, tiny_prepared, tmp_path):
    """What an inputs cache recomputes is what a maps cache stores (itself checked against the teacher's forward in
    test_extract), to fp16 rounding of the stored inputs; it stores no maps and no value vectors, and fewer bytes."""
    maps = build_cache(tiny_teacher, tiny_prepared, tmp_path / "maps", **RELATIONS)["manifest"]
    inputs = build_cache(tiny_teacher, tiny_prepared, tmp_path / "inputs", relations="inputs", **RELATIONS)["manifest"]
    names = {f["name"] for f in inputs["fields"]}
    assert {"hidden_1", "hidden_2", "hidden_3", "hidden_4"} <= names and not any(
        n.startswith(("attention_", "value_")) for n in names
    )
    assert inputs["relations"] == "inputs" and "relations" not in maps and inputs["layers"] == [2, 4]
    assert (inputs["attentions"], inputs["values"]) == ([2, 4], [4])
    assert _shard_bytes(inputs) < _shard_bytes(maps)
    projections = TeacherCache(tmp_path / "inputs").projections()
    assert sorted(projections) == [2, 4] and projections[4]["query_weight"].shape == (32, 32)
    stored, rebuilt = TeacherCache(tmp_path / "maps").split("train"), TeacherCache(tmp_path / "inputs").split("train")
    assert len(stored) == len(rebuilt)
    worst_attention = worst_value = 0.0
    for index in range(0, len(stored), 5):
        want, have = stored[index], rebuilt[index]
        assert want["example_id"] == have["example_id"]
        mask = torch.ones(1, have["length"], dtype=torch.long)
        for layer in (2, 4):
            hidden = torch.from_numpy(have[f"hidden_{layer - 1}"].astype(np.float32))[None]
            p = projections[layer]
            att = attention_from_input(hidden, mask, _projection(p, "query"), _projection(p, "key"), int(p["heads"]))[0]
            worst_attention = max(
                worst_attention, (att - torch.from_numpy(want[f"attention_{layer}"].astype(np.float32))).abs().max().item()
            )
        values = values_from_input(torch.from_numpy(have["hidden_3"].astype(np.float32)), _projection(projections[4], "value"))
        truth = torch.from_numpy(want["value_4"].astype(np.float32))
        worst_value = max(worst_value, ((values - truth).abs() / truth.abs().clamp_min(1.0)).max().item())
    assert worst_attention < 1e-3 and worst_value < 1e-3


def _relation_run(cache, out, tiny_teacher) -> list[dict]:
    spec = StudentSpec(num_layers=2, hidden_size=32, init="teacher")
    cfg = DistillConfig(
        epochs=2, batch_size=16, logging_steps=1, learning_rate=1e-3, alpha=0.0, beta=0.0, gamma=0.0,
        attention_weight=1.0, value_weight=1.0,
    )  # fmt: skip
    result = distill_student(cache, out, spec, cfg, seed=0, teacher_dir=tiny_teacher)
    return [h for h in result["history"] if "loss_attention" in h]


def test_a_student_learns_the_same_relation_losses_from_inputs_as_from_maps(tiny_teacher, tiny_prepared, tmp_path):
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "maps", **RELATIONS)
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "inputs", relations="inputs", **RELATIONS)
    maps = _relation_run(tmp_path / "maps", tmp_path / "s-maps", tiny_teacher)
    inputs = _relation_run(tmp_path / "inputs", tmp_path / "s-inputs", tiny_teacher)
    assert maps and len(maps) == len(inputs)
    for key in ("loss_attention", "loss_value"):
        np.testing.assert_allclose([h[key] for h in inputs], [h[key] for h in maps], rtol=2e-2, atol=1e-4)
    assert inputs[-1]["loss_attention"] < 0.8 * inputs[0]["loss_attention"]


def test_low_rank_inputs_share_the_hidden_layers_basis_and_train(tiny_teacher, tiny_prepared, tmp_path):
    """Under extract.rank the relation inputs are stored like any hidden layer: coefficients on their own basis; the
    student's losses read them rebuilt at full width."""
    manifest = build_cache(tiny_teacher, tiny_prepared, tmp_path / "c", relations="inputs", rank=8, dtype="int8", **RELATIONS)[
        "manifest"
    ]
    assert set(manifest["basis"]["explained_variance"]) == {"1", "2", "3", "4"}
    widths = {f["name"]: f["width"] for f in manifest["fields"]}
    assert widths["hidden_1"] == widths["hidden_3"] == 8
    cache = TeacherCache(tmp_path / "c")
    row, bases = cache.split("train")[0], cache.bases()
    rebuilt = reconstruct(torch.from_numpy(row["hidden_3"].astype(np.float32)), *map(torch.from_numpy, bases[3]))
    assert rebuilt.shape == (row["length"], 32)
    logs = _relation_run(tmp_path / "c", tmp_path / "s", tiny_teacher)
    assert logs and all(np.isfinite(h["loss_attention"]) and np.isfinite(h["loss_value"]) for h in logs)


def test_flipped_bytes_in_the_projections_are_caught(tiny_teacher, tiny_prepared, tmp_path):
    build_cache(tiny_teacher, tiny_prepared, tmp_path / "c", relations="inputs", attentions=[4])
    path = tmp_path / "c" / "table-relations.arrow"
    flip_middle_byte(path)
    with pytest.raises(PipelineError, match="table-relations.arrow: the cache's 'relations' table is missing or does not match"):
        TeacherCache(tmp_path / "c").projections()


def test_without_relation_layers_inputs_changes_nothing(tiny_teacher, tiny_prepared, tiny_cache, tmp_path):
    """relations: inputs with no attentions or values writes the cache it always wrote, byte for byte."""
    manifest = build_cache(tiny_teacher, tiny_prepared, tmp_path / "c", relations="inputs")["manifest"]
    assert manifest["splits"] == TeacherCache(tiny_cache).manifest["splits"] and "relations" not in manifest
