"""The report renders from fixture metrics: the table, the advice, and the charts."""

import json

import pytest

from pipeline.charts import svg_chart
from pipeline.report import render_report


def _metrics(d, name, acc, params, b32, layers=3, **extra):
    (d / f"{name}.json").write_text(
        json.dumps(
            {
                "scores_format": 1,
                "headline": "accuracy",
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
    # tiny is 5 points below, both is an ensemble
    assert "Fastest within 1 point of the teacher: **small** in PyTorch (2.00× faster than the PyTorch teacher" in md
    for chart in ("accuracy_vs_params", "accuracy_vs_latency", "training_loss", "dev_accuracy"):
        svg = (tmp_path / "report" / f"{chart}.svg").read_text()
        assert svg.startswith("<svg") and "<circle" in svg
    assert (tmp_path / "report" / "training_loss.svg").read_text().count("<polyline") == 1  # only small has a curve
    rows = (tmp_path / "report" / "models.csv").read_text().splitlines()  # what dvc.yaml's scatter plots draw
    assert rows[0] == "model,runtime,params_m,latency_ms_b32,metric" and rows[1] == "teacher,pytorch,22.0,50.0,90.0"
    assert len(rows) == 6


def test_the_fastest_pick_ranges_over_runtimes(fixture_dirs, tmp_path):
    """A student exported to int8 that keeps its accuracy is the fastest within a point; one whose int8 loses two
    points is not picked in int8; the as-deployed table and models.csv list every model in every runtime."""
    metrics, plots = fixture_dirs
    runtimes = {"onnx.accuracy": 0.895, "onnx.latency_ms_b32": 20.0, "onnx.speedup_b32": 2.5, "onnx.size_mb": 68.0}
    runtimes |= {"onnx_int8.accuracy": 0.893, "onnx_int8.latency_ms_b32": 10.0, "onnx_int8.speedup_b32": 5.0}
    _metrics(metrics, "small", 0.895, 17_000_000, 25.0, **runtimes, **{"onnx_int8.size_mb": 17.5})
    _metrics(metrics, "tiny", 0.89, 15_000_000, 12.0, layers=2, **{"onnx_int8.accuracy": 0.87, "onnx_int8.speedup_b32": 9.0})
    kinds = {"small": "student", "tiny": "student", "hard": "baseline (hard labels)", "both": "ensemble"}
    md = render_report(metrics, plots, tmp_path / "report", kinds)
    assert "Fastest within 1 point of the teacher: **small** as ONNX int8 (ONNX Runtime) (5.00× faster" in md
    assert "| small · onnx_int8 | 17.5 MB | 89.30 | 99.2% | — / 10.0 | — / 5.00× |" in md
    assert "| teacher · pytorch |" in md and "| tiny · onnx_int8 |" in md
    rows = (tmp_path / "report" / "models.csv").read_text().splitlines()
    assert "small · onnx_int8,onnx_int8,17.0,10.0,89.3" in rows and "small · onnx,onnx,17.0,20.0,89.5" in rows


def test_scores_of_another_format_are_refused_with_the_fix(fixture_dirs, tmp_path):
    from pipeline.errors import PipelineError

    metrics, plots = fixture_dirs
    old = json.loads((metrics / "small.json").read_text())
    del old["scores_format"]
    (metrics / "small.json").write_text(json.dumps(old))
    with pytest.raises(PipelineError, match=r"small.json: scores format None where this version reads 1; rerun the evaluate"):
        render_report(metrics, plots, tmp_path / "report", {"small": "student"})


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
    # paired differences 1, 4, 1 points: mean 2, sd sqrt(3), 95% t (2 df) 4.303 -> 2 ± 4.303
    assert "best KD student **kd** +2.00 [95% CI -2.30, +6.30; 3 paired seeds] points on dev acc." in md
    assert "within noise" in md and "no tuning split" in md and "Only 3 paired seeds" in md
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
    assert "Fastest within 1 point of the teacher: **b** in PyTorch (2.00× faster than the PyTorch teacher at batch 32" in md


def test_choices_are_made_on_the_tuning_split_and_a_kd_loss_is_said_plainly(tmp_path):
    """With val_* scores the ship advice ranks on val (dev only recorded), the KD-vs-baseline line gives the paired
    interval on val and dev, and a KD student that loses on val is called out with the teacher-baseline gap."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    _metrics(metrics, "teacher", 0.90, 22_000_000, 50.0, layers=6, val_accuracy=0.88, val_rows=2000)

    def seeded(dev, val):
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return {
            "seeds": [1, 2, 3, 4, 5],
            "accuracy_per_seed": dev,
            "accuracy_mean": mean(dev),
            "accuracy_std": 0.01,
            "val_accuracy": val[0],
            "val_accuracy_per_seed": val,
            "val_accuracy_mean": mean(val),
            "val_accuracy_std": 0.01,
        }

    # kd wins on dev (the split choices must not look at) but loses on val
    kd = seeded([0.89, 0.90, 0.88, 0.89, 0.90], [0.860, 0.862, 0.858, 0.861, 0.859])
    hard = seeded([0.87, 0.87, 0.87, 0.87, 0.87], [0.870, 0.871, 0.869, 0.872, 0.868])
    _metrics(metrics, "kd", kd["accuracy_per_seed"][0], 17_000_000, 25.0, **kd)
    _metrics(metrics, "hard", hard["accuracy_per_seed"][0], 17_000_000, 25.0, **hard)
    md = render_report(metrics, tmp_path, tmp_path / "report", {"kd": "student", "hard": "baseline (hard labels)"})
    assert "chosen on the tuning split `val` (2000 rows" in md
    assert "Most accurate: **hard** (val acc 87.00 ± 1.00" in md  # ranked on val, though kd leads on dev
    # val differences -1.0, -0.9, -1.1, -1.1, -0.9: mean -1.0, sd 0.1, t(4 df) 2.776 -> half 0.124
    assert "**kd** -1.00 [95% CI -1.12, -0.88; 5 paired seeds] points on val acc" in md
    assert "on dev, for the record, +2.20 [95% CI" in md
    assert "**kd does not beat its hard-label baseline hard on val acc** (-1.00 points)" in md
    assert "teacher leads that baseline by only +1.00 points" in md
    header = next(line for line in md.splitlines() if line.startswith("| model | role"))
    assert "| val acc | dev acc |" in header
    assert "| kd | 1, 2, 3, 4, 5 | 86.00, 86.20, 85.80, 86.10, 85.90 | 89.00, 90.00, 88.00, 89.00, 90.00 |" in md


def test_same_speed_students_are_told_apart_by_accuracy(tmp_path):
    """Two same-shape students time within 5% of each other (noise): the more accurate is the 'fastest' pick, even when
    its printed speedup is a hair lower; a student 10% slower stays out of the tie."""
    metrics, plots = tmp_path / "metrics", tmp_path / "plots"
    metrics.mkdir()
    plots.mkdir()
    _metrics(metrics, "teacher", 0.90, 22_000_000, 50.0, layers=6)
    _metrics(metrics, "hard", 0.893, 17_000_000, 25.0, speedup_b32=2.0)
    _metrics(metrics, "kd", 0.898, 17_000_000, 25.5, speedup_b32=1.96)
    _metrics(metrics, "slow", 0.899, 17_000_000, 28.0, speedup_b32=1.79)
    kinds = {"teacher": "teacher", "hard": "student", "kd": "student", "slow": "student"}
    md = render_report(metrics, plots, tmp_path / "out", kinds)
    assert "Fastest within 1 point of the teacher: **kd** in PyTorch (1.96× faster than the PyTorch teacher at batch 32" in md
    assert "speedups within 5% count as one" in md


def test_a_task_report_weighs_a_multi_task_student_against_the_single_task_one_and_gives_one_encoder_savings(tmp_path):
    metrics, plots, teacher_plots, train = (tmp_path / d for d in ("metrics", "plots", "tplots", "train"))
    for d in (metrics, plots, teacher_plots, train):
        d.mkdir()
    one = {"tasks": ["main", "ner"], "params": 13_000_000, "params_separate": 22_000_000}
    one.update({"latency_ms_b1": 4.0, "latency_ms_b1_separate": 7.5, "latency_ms_b32": 40.0, "latency_ms_b32_separate": 79.0})
    _metrics(metrics, "teacher", 0.90, 22_000_000, 50.0, layers=6)
    _metrics(metrics, "mt", 0.88, 11_000_000, 25.0, one_encoder=one)
    _metrics(metrics, "single", 0.89, 11_000_000, 25.0)
    _metrics(metrics, "hard", 0.85, 11_000_000, 25.0)
    (train / "train_mt.json").write_text(json.dumps({"seconds": 321.0}))
    (metrics / "train_mt.json").write_text(json.dumps({"seconds": 1.0}))  # not the students' dir: not read
    (metrics / "teacher_train.json").write_text(json.dumps({"seconds": 99.0}))
    (teacher_plots / "teacher.csv").write_text("step,epoch,loss\n1,0.5,0.9\n2,1.0,0.5\n")
    kinds = {"mt": "multi-task student (main+ner)", "single": "student", "hard": "baseline (hard labels)"}
    md = render_report(metrics, plots, tmp_path / "r", kinds, train_dir=train, teacher_plots=teacher_plots, title="Task ner")
    assert md.startswith("# Task ner")
    assert "Multi-task **mt** (main+ner) keeps 98.9% of the best single-task student of its shape, **single**" in md
    assert "serves main, ner from one encoder: 13.0 M parameters against 22.0 M" in md
    assert "batch 1: 4.00 ms vs 7.50 ms; batch 32: 40.00 ms vs 79.00 ms" in md
    assert "| mt | multi-task student (main+ner) |" in md and "321 s" in md and "| 99 s |" in md
    assert "Distillation vs the hard-label baseline **hard** (same shape): best KD student **single**" in md
    assert "no data" not in (tmp_path / "r" / "training_loss.svg").read_text()  # the teacher's curve, from its dir


def test_a_teacher_that_scored_zero_gives_no_retention_rather_than_a_crash(tmp_path):
    # a tiny smoke run's NER teacher can find no entity at all: retention is undefined, shown as "—"
    metrics, plots = tmp_path / "metrics", tmp_path / "plots"
    metrics.mkdir()
    plots.mkdir()
    _metrics(metrics, "teacher", 0.0, 22_000_000, 50.0, layers=6)
    _metrics(metrics, "small", 0.30, 17_000_000, 25.0)
    _metrics(metrics, "multi", 0.20, 17_000_000, 25.0)
    kinds = {"small": "student", "multi": "multi-task student (a+b)"}
    md = render_report(metrics, plots, tmp_path / "report", kinds)
    small = next(row for row in md.splitlines() if row.startswith("| small |"))
    assert "| 30.00 |" in small and "| — |" in small
    assert "Most accurate: **small** (dev acc 30.00, — of the teacher" in md
    assert "keeps 66.7% of the best single-task student of its shape, **small**" in md
