"""The report's decisions as pure functions of plain score dicts (`pipeline.decisions`), and the scores contract's
keys (`pipeline.scores`): every expected value below is worked out by hand."""

import pytest

from pipeline.decisions import fastest_near_teacher, kd_verdict, most_accurate, paired_difference, same_shape, speedup
from pipeline.scores import key, mean_score, stamp


def _m(acc, val=None, speed=None, **extra):
    m = stamp({"accuracy": acc, "params": 17, "layers": 3, "hidden_size": 384}, "accuracy")
    if val is not None:
        m["val_accuracy"] = val
    if speed is not None:
        m["speedup_b32"] = speed
    return {**m, **extra}


def test_keys_and_the_choice_split():
    assert (key("f1"), key("f1", "val")) == ("f1", "val_f1")
    assert mean_score(_m(0.8)) == 0.8  # no tuning split: dev
    assert mean_score(_m(0.8, val=0.7)) == 0.7  # the tuning split when there is one
    assert mean_score(_m(0.8, val=0.7, val_accuracy_mean=0.75)) == 0.75  # the seed mean when there are seeds


def test_most_accurate_is_chosen_on_the_tuning_split_not_dev():
    models = {"a": _m(0.90, val=0.80), "b": _m(0.85, val=0.82)}
    assert most_accurate(models, ["a", "b"]) == "b" and most_accurate(models, []) is None


def test_fastest_within_a_point_ties_close_speedups_and_prefers_the_more_accurate():
    teacher = _m(0.900)
    models = {
        "fast_weak": _m(0.880, speed=3.0),  # 2 points below: out
        "fast": _m(0.892, speed=2.0),
        "as_fast_better": _m(0.895, speed=1.95),  # within 5% of 2.0: the same speed, more accurate
        "slow": _m(0.899, speed=1.5),
    }
    assert fastest_near_teacher(models, list(models), teacher) == ("as_fast_better", 2)
    assert fastest_near_teacher(models, ["fast_weak"], teacher) == (None, 0)


def test_speedup_falls_back_to_the_teachers_own_latency():
    assert speedup(_m(0.9, speed=2.5), {}) == 2.5
    assert speedup(_m(0.9, latency_ms_b32=20.0), {"latency_ms_b32": 50.0}) == 2.5
    assert speedup(_m(0.9), {"latency_ms_b32": 50.0}) is None


def test_paired_difference_by_hand():
    # seeds 1, 2, 3 paired; differences 2, 4, 3 points: mean 3, sd 1, t(2 df) = 4.303, half-width 4.303 / sqrt(3)
    a = _m(0.5, seeds=[1, 2, 3], accuracy_per_seed=[0.82, 0.84, 0.83])
    b = _m(0.5, seeds=[3, 2, 1], accuracy_per_seed=[0.80, 0.80, 0.80])
    d = paired_difference(a, b, "dev")
    assert d["n"] == 3 and d["mean"] == pytest.approx(3.0)
    assert (d["low"], d["high"]) == (pytest.approx(3.0 - 4.303 / 3**0.5), pytest.approx(3.0 + 4.303 / 3**0.5))
    one = paired_difference(_m(0.81), _m(0.80), "dev")
    assert one["n"] == 1 and one["mean"] == pytest.approx(1.0) and one["low"] is None
    assert paired_difference(_m(0.81), _m(0.80), "val") is None  # no tuning-split scores


def test_kd_verdict_says_when_kd_does_not_win_and_how_far_the_teacher_leads():
    teacher, base = _m(0.90, val=0.86), _m(0.88, val=0.85)
    lost = kd_verdict(_m(0.89, val=0.84), base, teacher, "val")
    assert not lost["beats"] and lost["on_split"]["mean"] == pytest.approx(-1.0)
    assert lost["teacher_lead"] == pytest.approx(1.0) and lost["on_dev"]["mean"] == pytest.approx(1.0)
    won = kd_verdict(_m(0.89, val=0.87), base, teacher, "val")
    assert won["beats"] and not won["within_noise"]  # one seed: no interval, so not "within noise" either


def test_same_shape_needs_equal_layers_width_and_params_and_no_ensemble():
    assert same_shape(_m(0.9), _m(0.8)) and not same_shape(_m(0.9), _m(0.8, layers=2))
    assert not same_shape(_m(0.9, members=["a", "b"]), _m(0.8))
