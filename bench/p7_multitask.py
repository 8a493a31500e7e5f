"""P7, one student for several tasks: each task's dev metric of the multi-task student against that task's
single-task KD student (and its hard-label baseline) at equal total steps; parameters, latency and training time of
the one student against the single-task students it replaces.

Reads the scores `dvc repro` (or `dvc exp run -S distill.seeds=3`) wrote for params/multitask.yaml: the main task's in
artifacts/metrics, each other task's in artifacts/tasks/<task>/metrics; training summaries train_<name>.json.

    python bench/p7_multitask.py [--student mt] [--single main=l3 conll2003=ner_l3] [--baseline main=l3_hard conll2003=ner_l3_hard]
    python bench/p7_multitask.py --student mt3 --single main=l3 conll2003=ner_l3 squad=qa_l3 --baseline --name p7_multitask_qa
      (SQuAD as a third task: its pipeline's settings are in docs/findings.md, "Multi-task students")
"""

from __future__ import annotations

import argparse
import json
import statistics

from pipeline.params import load_params
from pipeline.specs import MAIN

from common import ROOT, save


def _scores(task: str, name: str) -> dict:
    root = ROOT / "artifacts" / "metrics" if task == MAIN else ROOT / "artifacts" / "tasks" / task / "metrics"
    path = root / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no scores; run the multi-task example first (README 'Several tasks, one student')")
    return json.loads(path.read_text())


def _headline(scores: dict) -> tuple[float, float, int]:
    key = scores["headline"]
    return scores.get(f"{key}_mean", scores[key]), scores.get(f"{key}_std", 0.0), len(scores.get("seeds", [1]))


def _train(name: str) -> dict:
    return json.loads((ROOT / "artifacts" / "metrics" / f"train_{name}.json").read_text())


def _seconds(name: str) -> float:
    """A student's training wall time: the median over its seed runs (robust to one run slowed by other work)."""
    train = _train(name)
    runs = train.get("seed_seconds") or [r["seconds"] for r in train.get("seed_runs", [])] or [train["seconds"]]
    return statistics.median(runs)


def _has_train(name: str) -> bool:
    return (ROOT / "artifacts" / "metrics" / f"train_{name}.json").is_file()


def _teacher_seconds(task: str) -> float:
    root = ROOT / "artifacts" / "metrics" if task == MAIN else ROOT / "artifacts" / "tasks" / task / "metrics"
    return json.loads((root / "teacher_train.json").read_text())["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="mt")
    parser.add_argument("--single", nargs="+", default=["main=l3", "conll2003=ner_l3"], help="task=single-task KD student")
    parser.add_argument("--baseline", nargs="*", default=["main=l3_hard", "conll2003=ner_l3_hard"], help="task=its baseline")
    parser.add_argument("--name", default="p7_multitask", help="results file: bench/results/<name>.json")
    args = parser.parse_args()
    single, baseline = dict(s.split("=") for s in args.single), dict(s.split("=") for s in args.baseline)
    spec = load_params(ROOT / "params.yaml").multitask.students[args.student]
    tasks, replaced = {}, {"params": 0, "latency_ms_b1": 0.0, "latency_ms_b32": 0.0, "train_seconds": 0.0}
    for task in spec.tasks:
        mt, one = _scores(task, args.student), _scores(task, single[task])
        (m, m_sd, n), (s, s_sd, n_single) = _headline(mt), _headline(one)
        row = {
            "metric": mt["headline"],
            "multitask": f"{100 * m:.2f} ± {100 * m_sd:.2f} ({n} seeds)",
            "single_task": f"{100 * s:.2f} ± {100 * s_sd:.2f} ({n_single} seeds, {single[task]})",
            "kept": round(m / s, 4),
            "goal_kept": 0.99,
            "met": m / s >= 0.99,
        }
        if task in baseline:
            b, b_sd, _ = _headline(_scores(task, baseline[task]))
            row["hard_label_baseline"] = f"{100 * b:.2f} ± {100 * b_sd:.2f} ({baseline[task]})"
        row["latency_ms_b1"] = {"multitask": mt["latency_ms_b1"], "single": one["latency_ms_b1"]}
        int8 = f"onnx_int8.{mt['headline']}"  # as shipped: each task's checkpoint exported and quantized
        if int8 in mt and int8 in one:
            row["onnx_int8"] = {"multitask": round(100 * mt[int8], 2), "single": round(100 * one[int8], 2)}
        tasks[task] = row
        replaced["params"] += one["params"]
        replaced["latency_ms_b1"] += one["latency_ms_b1"]
        replaced["latency_ms_b32"] += one["latency_ms_b32"]
        replaced["train_seconds"] += _seconds(single[task])
    train = _train(args.student)
    one_pass = _scores(next(iter(spec.tasks)), args.student).get("one_encoder", {})  # timed by the first task's evaluate
    result = {
        "student": args.student,
        "tasks": tasks,
        "steps": train["steps"],
        "batches_per_task": {t: v["batches_per_epoch"] for t, v in train["tasks"].items()},
        "one_student": {"params": train["params"], "encoders": 1, "train_seconds": _seconds(args.student)},
        "replaced": {**replaced, "encoders": len(spec.tasks)},
        "params_ratio": round(train["params"] / replaced["params"], 4),
        "one_encoder_pass": {
            **{k: one_pass[k] for k in ("params", "params_separate") if k in one_pass},
            **{
                f"b{bs}": {
                    "one_encoder_ms": one_pass[f"latency_ms_b{bs}"],
                    "separate_ms": one_pass[f"latency_ms_b{bs}_separate"],
                    "speedup": round(one_pass[f"latency_ms_b{bs}_separate"] / one_pass[f"latency_ms_b{bs}"], 3),
                }
                for bs in (1, 32)
                if f"latency_ms_b{bs}" in one_pass
            },
        },
        "train_seconds": {
            **{f"teacher ({t})": _teacher_seconds(t) for t in spec.tasks},
            **{n: _seconds(n) for n in (args.student, *single.values(), *baseline.values()) if _has_train(n)},
        },
        "note": "latency_ms_b1 per task: each task's checkpoint alone (its own evaluate stage); one_encoder_pass: all "
        "tasks from one encoder pass against the per-task models one after the other, timed interleaved",
    }
    save(args.name, result)


if __name__ == "__main__":
    main()
