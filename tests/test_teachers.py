"""Several teachers: the combined soft target (golden values), extra caches read through their own manifests and refused
with one line when missing, from other params or from other data; a student learning from two teachers; the params
checks and the generated DVC stages."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from pipeline.cache import TeacherCache
from pipeline.collate import CacheCollator
from pipeline.config import DistillConfig, ExtractConfig, StudentSpec
from pipeline.distill import distill_student
from pipeline.errors import PipelineError
from pipeline.extract import extract_cache
from pipeline.losses import combine_teachers
from pipeline.params import params_from_dict
from pipeline.teachers import EXTRA_LOGITS, join_teachers, open_extra_caches
from tests.conftest import ROOT, make_tiny_teacher

RECORD = {"name": "t1", "seed": 1, "epochs": 2.0}
FAST = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=2, teachers=["teacher", "t1"])
FAST_ONE = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=2)


def test_combined_soft_target_is_the_weighted_average_of_the_teachers_probabilities():
    """Golden: teachers [1, 0] and [3, 0], weights 1:3, T = 2. softmax([0.5, 0]) = [0.62246, 0.37754], softmax([1.5, 0])
    = [0.81757, 0.18243]; 0.25 * first + 0.75 * second = [0.76879, 0.23121]."""
    logits = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])
    combined = combine_teachers(logits, [1.0, 3.0], temperature=2.0)
    assert torch.softmax(combined / 2.0, -1)[0].tolist() == pytest.approx([0.76879, 0.23121], abs=1e-5)
    # equal weights by default; symmetric teachers give the uniform distribution; one teacher is itself (up to a shift)
    sym = combine_teachers(torch.tensor([[[2.0, 0.0], [0.0, 2.0]]]), None, temperature=1.0)
    assert torch.softmax(sym, -1)[0].tolist() == pytest.approx([0.5, 0.5])
    one = combine_teachers(torch.tensor([[[1.0, -1.0, 0.5]]]), None, temperature=3.0)
    assert torch.softmax(one / 3, -1)[0].tolist() == pytest.approx(torch.softmax(torch.tensor([1.0, -1.0, 0.5]) / 3, -1).tolist())
    # per token (B, K, T, L), and the mse loss's weighted mean of raw logits
    per_token = combine_teachers(torch.zeros(2, 3, 5, 4), None, temperature=2.0)
    assert per_token.shape == (2, 5, 4)
    assert combine_teachers(logits, [1.0, 3.0], 2.0, "mse").tolist() == [[2.5, 0.0]]
    assert math.isfinite(combine_teachers(logits, [0.0, 1.0], 2.0).sum().item())  # a zero weight drops a teacher


@pytest.fixture(scope="module")
def second_cache(tmp_path_factory, sst2_small, tiny_prepared):
    teacher = make_tiny_teacher(tmp_path_factory.mktemp("t1"), sst2_small, seed=1)
    out = tmp_path_factory.mktemp("caches") / "t1"
    cfg = ExtractConfig(layers=[], batch_size=16, shard_max_mb=1 / 16)
    extract_cache(teacher, tiny_prepared[0], out, cfg, info=tiny_prepared[1], record=RECORD)
    return out


def test_extra_logits_join_the_main_rows_by_example_id(tiny_cache, second_cache):
    main, extra = TeacherCache(tiny_cache), TeacherCache(second_cache)
    assert not [f for f in extra.manifest["fields"] if f["name"].startswith("hidden")]  # logits only
    assert extra.manifest["teacher_params"] == RECORD
    joined = join_teachers(main.split("train", ["logits", "hidden_2"]), [extra], "logits")
    by_id = {r["example_id"]: r["logits"] for r in (extra.split("train", ["logits"])[i] for i in range(len(joined)))}
    for i in (0, 7, len(joined) - 1):
        row = joined[i]
        assert row[EXTRA_LOGITS].shape == (1, 2) and np.array_equal(row[EXTRA_LOGITS][0], by_id[row["example_id"]])
    batch = CacheCollator([2])([joined[i] for i in range(5)])
    assert batch[f"teacher_{EXTRA_LOGITS}"].shape == (5, 1, 2)


def test_a_student_learns_from_two_teachers(tiny_cache, second_cache, tmp_path):
    extra = {"t1": (second_cache, RECORD)}
    out = distill_student(tiny_cache, tmp_path / "s", StudentSpec(2, 16, num_heads=2), FAST, seed=0, extra_caches=extra)
    assert out["summary"]["teachers"] == ["teacher", "t1"] and (tmp_path / "s" / "model.safetensors").is_file()
    kl = [h["loss_kl"] for h in out["history"] if "loss_kl" in h]
    assert kl and all(math.isfinite(v) for v in kl)
    # the same run with the main teacher alone: the soft targets (so the KL) differ from the first step
    alone = distill_student(tiny_cache, tmp_path / "a", StudentSpec(2, 16, num_heads=2), FAST_ONE, seed=0)
    assert [h["loss_kl"] for h in alone["history"] if "loss_kl" in h][0] != kl[0]


def test_extra_teacher_caches_are_refused_with_one_line(tiny_cache, second_cache, tmp_path, tiny_teacher, tiny_prepared):
    main = TeacherCache(tiny_cache)
    with pytest.raises(PipelineError, match=r"no cache of teacher 't9' \(manifest.json missing\); run `dvc repro extract-t9`"):
        open_extra_caches(main, {"t9": (tmp_path / "t9", RECORD)}, "lazy")
    other = {**RECORD, "seed": 7}
    with pytest.raises(PipelineError, match=r"cached from other params \(seed: 1 in the cache, 7 in params\)"):
        open_extra_caches(main, {"t1": (second_cache, other)}, "lazy")
    splits, info = tiny_prepared
    fewer = {name: ds.select(range(len(ds) - 3)) for name, ds in splits.items()}
    info = json.loads(json.dumps(info))
    info["splits"]["train"]["fingerprint"] = "0" * 64
    cfg = ExtractConfig(layers=[], batch_size=16)
    extract_cache(tiny_teacher, fewer, tmp_path / "t2", cfg, info=info, record=RECORD)
    with pytest.raises(PipelineError, match=r"another prepared split 'train' than .*; run `dvc repro extract-t1`"):
        open_extra_caches(main, {"t1": (tmp_path / "t2", RECORD)}, "lazy")


def _params(**changes):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return params_from_dict(raw)


def test_params_for_several_teachers():
    p = _params(teachers={"t43": {"seed": 43, "learning_rate": 2e-4}}, **{"students.l3.teachers": ["teacher", "t43"]})
    cfg, seed = p.teacher_for("t43")
    assert seed == 43 and cfg.learning_rate == 2e-4 and cfg.epochs == p.teacher.epochs
    assert p.teacher_record("t43")["seed"] == 43 and "checkpoint_steps" not in p.teacher_record("t43")
    assert p.role("teacher-t43") == "teacher (extra)" and p.role("teacher-ensemble") == "teacher ensemble"
    bad = {
        "students.l3.teachers": (["teacher", "t9"], r"'students.l3.teachers' names \['t9'\], not under 'teachers'"),
        "distill.teachers": (["t43", "teacher"], r"'distill.teachers' must start with 'teacher'"),
        "distill.teacher_weights": ([1.0, 2.0], r"'distill.teacher_weights' \[1.0, 2.0\] must give one weight per teacher"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(PipelineError, match=message):
            _params(teachers={"t43": {"seed": 43}}, **{key: value})
    with pytest.raises(PipelineError, match=r"unknown key 'teachers.t43.sed'"):
        _params(teachers={"t43": {"sed": 43}})
    with pytest.raises(PipelineError, match="several teachers need dense logits"):
        _params(task="masked_lm", teachers={"t43": {"seed": 43}}, **{"distill.teachers": ["teacher", "t43"]})


def test_dvc_stages_for_each_extra_teacher(tmp_path):
    """params.teachers generates teacher-<n>, extract-<n>, evaluate_teacher-<n> and teacher-ensemble; students then
    depend on artifacts/caches."""
    import shutil

    from pipeline.dvcgraph import expected_graph

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline")
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["teachers"] = {"t43": {"seed": 43}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stages = expected_graph(tmp_path)["stages"]
    names = list(stages)
    assert names.index("teacher-t43") == names.index("teacher") + 1
    assert names.index("extract-t43") == names.index("extract") + 1
    assert {"evaluate_teacher-t43", "teacher-ensemble"} <= set(names)
    assert "artifacts/teachers/t43" in stages["extract-t43"]["deps"] and "teachers.t43" in stages["extract-t43"]["params"]
    assert "--name t43" in stages["extract-t43"]["cmd"] and "artifacts/caches/t43" in stages["extract-t43"]["outs"]
    assert stages["distill"]["do"]["deps"][-1] == "artifacts/caches"
    assert stages["distill"]["do"]["cmd"].endswith(" --caches-root artifacts/caches")
    assert "--teachers teacher t43" in stages["teacher-ensemble"]["cmd"]
