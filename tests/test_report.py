"""The report renders from fixture metrics: the table, the advice, and the charts."""

import json

import pytest

from pipeline.report import render_report, svg_chart


def _metrics(d, name, acc, params, b32, layers=3, **extra):
    (d / f"{name}.json").write_text(
        json.dumps(
            {
                "accuracy": acc,
                "f1": acc - 0.01,
                "params": params,
                "size_mb": params * 4e-6,
                "latency_ms_b1": b32 / 10,
                "latency_ms_b32": b32,
                "layers": layers,
                "hidden_size": 384,
                **extra,
            }
        )
    )


@pytest.fixture
def fixture_dirs(tmp_path):
    metrics, plots = tmp_path / "metrics", tmp_path / "plots"
    metrics.mkdir()
    plots.mkdir()
    _metrics(metrics, "teacher", 0.90, 22_000_000, 50.0, layers=6)
    _metrics(metrics, "small", 0.895, 17_000_000, 25.0)
    _metrics(metrics, "tiny", 0.85, 15_000_000, 12.0, layers=2)
    _metrics(metrics, "hard", 0.87, 17_000_000, 25.0)
    _metrics(metrics, "both", 0.90, 32_000_000, 37.0, members=["small", "tiny"])
    (metrics / "train_small.json").write_text(json.dumps({"seconds": 123.0, "peak_rss_mb": 1500.0}))
    (metrics / "extract.json").write_text(json.dumps({"bytes": 1}))
    (plots / "small.csv").write_text(
        "step,epoch,loss,eval_accuracy\n10,0.5,0.6,\n20,1.0,0.4,0.88\n30,1.5,0.3,\n40,2.0,0.25,0.895\n"
    )
    return metrics, plots


def test_report_table_advice_and_charts(fixture_dirs, tmp_path):
    metrics, plots = fixture_dirs
    kinds = {"small": "student", "tiny": "student", "hard": "baseline (hard labels)", "both": "ensemble"}
    md = render_report(metrics, plots, tmp_path / "report", kinds)
    lines = md.splitlines()
    table = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip() for row in table] == ["teacher", "both", "small", "hard", "tiny"]
    small = next(row for row in table if row.startswith("| small "))
    assert "99.4%" in small and "2.00×" in small and "123 s" in small and "1500 MB" in small
    assert "| hard | baseline (hard labels) |" in md and "small+tiny" in md
    assert "Fastest within 1 point of the teacher: **small** (2.00× faster" in md  # tiny is 5 points below, both is an ensemble
    for chart in ("accuracy_vs_params", "accuracy_vs_latency", "training_loss", "dev_accuracy"):
        svg = (tmp_path / "report" / f"{chart}.svg").read_text()
        assert svg.startswith("<svg") and "<circle" in svg
    assert (tmp_path / "report" / "training_loss.svg").read_text().count("<polyline") == 1  # only small has a curve


def test_report_needs_the_teacher(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        render_report(tmp_path / "m", tmp_path, tmp_path / "r", {})


def test_svg_chart_handles_empty_and_single_points(tmp_path):
    svg_chart({}, tmp_path / "a.svg", x_label="x", y_label="y", title="t")
    assert "no data" in (tmp_path / "a.svg").read_text()
    svg_chart({"one": [(1.0, 2.0)]}, tmp_path / "b.svg", x_label="x", y_label="y", title="t")
    assert "<circle" in (tmp_path / "b.svg").read_text()


def test_report_gives_mean_and_std_over_seeds_and_the_gain_over_the_baseline(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    _metrics(metrics, "teacher", 0.90, 22_000_000, 50.0, layers=6)

    def seeded(accs):
        return {
            "seeds": [1, 2, 3],
            "accuracy_per_seed": accs,
            "accuracy_mean": sum(accs) / 3,
            "accuracy_std": 0.01,
            "f1_mean": sum(accs) / 3 - 0.01,
            "f1_std": 0.02,
        }

    _metrics(metrics, "kd", 0.88, 17_000_000, 25.0, speedup_b32=1.9, **seeded([0.88, 0.89, 0.87]))
    _metrics(metrics, "hard", 0.87, 17_000_000, 25.0, **seeded([0.87, 0.85, 0.86]))
    (metrics / "train_kd.json").write_text(
        json.dumps({"seconds": 100.0, "seeds": [1, 2, 3], "seconds_mean": 110.0, "seconds_std": 8.0})
    )
    md = render_report(metrics, tmp_path, tmp_path / "report", {"kd": "student", "hard": "baseline (hard labels)"})
    kd = next(line for line in md.splitlines() if line.startswith("| kd "))
    # mean ± std of accuracy and F1 (in points), retention of the mean, the interleaved speedup, train time over seeds
    assert "| 3 | 88.00 ± 1.00 | 87.00 ± 2.00 | 97.8 ± 1.1% |" in kd and "| 1.90× |" in kd and "110 ± 8 s" in kd
    assert "best KD student **kd** +2.00 points (3 vs 3 seeds)" in md
    assert "| hard | 1, 2, 3 | 87.00, 85.00, 86.00 |" in md


def test_report_leaves_out_models_params_no_longer_name(fixture_dirs, tmp_path):
    """A metrics file of a student removed from params (left in artifacts/metrics) must not reach the report."""
    metrics, plots = fixture_dirs
    md = render_report(metrics, plots, tmp_path / "report", {"small": "student", "hard": "baseline (hard labels)"})
    names = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert names == ["teacher", "small", "hard"]
    assert "tiny" not in md and "both" not in md


def test_fastest_within_a_point_is_ranked_by_the_speedup_it_prints(tmp_path):
    """A student can be slower in raw latency (timed on its own, on a busy spell) yet faster against the teacher-shaped
    model timed interleaved with it: the advice names the one with the larger printed speedup."""
    metrics, plots = tmp_path / "metrics", tmp_path / "plots"
    metrics.mkdir()
    plots.mkdir()
    _metrics(metrics, "teacher", 0.90, 22_000_000, 50.0, layers=6)
    _metrics(metrics, "a", 0.895, 17_000_000, 20.0, speedup_b32=1.5)  # lower raw latency, smaller speedup
    _metrics(metrics, "b", 0.895, 17_000_000, 30.0, speedup_b32=2.0)
    md = render_report(metrics, plots, tmp_path / "out", {"teacher": "teacher", "a": "student", "b": "student"})
    assert "Fastest within 1 point of the teacher: **b** (2.00× faster at batch 32)" in md
