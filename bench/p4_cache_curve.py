"""P4 curve: cache bytes per token against the student's dev metric, for fp16, int8, low-rank and compact-relation caches.

    python bench/p4_cache_curve.py [--configs float16 int8 int8:16 int8:32 int8:64 int8:128] [--seeds 42 43 44]
                                   [--student l3] [--name p4_cache_curve] [--report] [--retime N]

Needs the default run's fine-tuned teacher and prepared data (`dvc repro` first). Per config (`<dtype>[:<rank>][+inputs]`)
it extracts the default run's rows (train, dev, val and transfer) from that teacher with the default `extract` params
but the config's dtype and `extract.rank` (`+inputs`: `extract.relations: inputs`, attention maps and values recomputed
from their layer's cached input), timed; then trains the default `--student` from that cache under each seed, with the
default params (same rows, same steps), and scores it on dev (the task's headline metric: SST-2 accuracy, SQuAD F1).
Bytes per token per layer are the hidden fields' (values and the int8 scale), from the cache's field specs; the whole
cache's bytes per token are recorded too. A config's metric loss and training time are against fp16's on the same
seeds, its extraction time against fp16's (each extraction timed once: run them on a quiet CPU).
Finished (config, seed) runs are kept in bench/work/p4_curve.json, so an interrupted run continues; `--report` writes
the results from the runs finished so far (each config's `seeds` lists them) and runs nothing; `--retime N` only
extracts each config again, N rounds with the configs interleaved, and keeps the median as its extraction time (for
the ratio on a quiet CPU when the curve's own runs shared it).
Writes bench/results/<name>.json and .svg (another task's curve: run it in a copy of the project whose params.yaml is
that task's, e.g. `--name p4_cache_qa` beside params/squad.yaml).
"""

import argparse
import dataclasses
import json
import shutil
import statistics
import time

import numpy as np

from pipeline.cache import TeacherCache
from pipeline.cache.schema import STORAGE
from pipeline.charts import svg_chart
from pipeline.data import load_prepared
from pipeline.distill import distill_student
from pipeline.evaluation import evaluate_saved_model
from pipeline.extract import extract_cache
from pipeline.params import load_params

from common import ROOT, WORK, machine, save

STATE = WORK / "p4_curve.json"


def hidden_bytes_per_token_per_layer(cache: TeacherCache) -> float:
    """Stored bytes a token of one cached hidden layer costs: its values plus the int8 scale, from the field specs."""
    layers = cache.layers
    total = sum(
        f.width * np.dtype(STORAGE[f.dtype][1]).itemsize
        for f in cache.fields
        if f.kind == "token" and f.name.split("_scale")[0] in {f"hidden_{x}" for x in layers}
    )
    return total / max(len(layers), 1)


def slug(config: str) -> str:
    return config.replace(":", "_r").replace("+", "_")


def dev_metric(run: dict) -> float:
    return run["dev_metric"] if "dev_metric" in run else run["dev_accuracy"]  # (runs recorded before QA's curve)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["float16", "int8", "int8:16", "int8:32", "int8:64", "int8:128"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--student", default="l3")
    ap.add_argument("--name", default="p4_cache_curve", help="results file name under bench/results")
    ap.add_argument("--report", action="store_true", help="write the results from the finished runs; run nothing")
    ap.add_argument("--retime", type=int, default=0, metavar="N", help="only re-time each config's extraction, N rounds")
    args = ap.parse_args()
    params = load_params(ROOT / "params.yaml")
    teacher = ROOT / "artifacts/teacher"
    if not (teacher / "model.safetensors").is_file():
        raise SystemExit("run `dvc repro` first: the curve needs the default run's fine-tuned teacher and prepared data")
    splits, info = load_prepared(ROOT / "data/prepared")
    if (ROOT / "data/transfer").exists():
        transfer, transfer_info = load_prepared(ROOT / "data/transfer")
        splits.update(transfer)
        info["splits"].update(transfer_info["splits"])
    spec = params.students[args.student]
    distill_cfg, _ = params.distill_for(args.student)
    state = json.loads(STATE.read_text()) if STATE.is_file() else {}

    def extract(config: str, cache) -> float:
        """Extract the run's rows under `config` into `cache`; the seconds it took."""
        form, _, relations = config.partition("+")
        dtype, _, rank = form.partition(":")
        cfg = dataclasses.replace(
            params.extract, dtype=dtype, rank=int(rank) if rank else None, relations=relations or "maps", device="cpu"
        )
        shutil.rmtree(cache, ignore_errors=True)
        started = time.perf_counter()
        extract_cache(teacher, splits, cache, cfg, info=info, mask_seed=params.seed, task_config=params.task_config)
        return round(time.perf_counter() - started, 1)

    if args.retime:  # extraction alone, the configs interleaved round by round: their ratio on one host at one time
        times = {config: [] for config in args.configs}
        for _ in range(args.retime):
            for config in args.configs:
                times[config].append(extract(config, WORK / "p4_curve_retime"))
                print(config, times[config][-1], flush=True)
        shutil.rmtree(WORK / "p4_curve_retime", ignore_errors=True)
        for config, seconds in times.items():
            state.setdefault(config, {"seeds": {}}).update(extract_s=statistics.median(seconds), extract_runs=seconds)
        STATE.write_text(json.dumps(state, indent=2))
    for config in [] if args.report or args.retime else args.configs:
        entry = state.setdefault(config, {"seeds": {}})
        cache = WORK / f"p4_curve_cache_{slug(config)}"
        if "extract_s" not in entry or not (cache / "manifest.json").is_file():
            entry["extract_s"] = extract(config, cache)
            entry["seeds"] = {}
        opened = TeacherCache(cache)
        tokens = sum(s["tokens"] for s in opened.manifest["splits"].values())
        entry["cache_mb"] = round(opened.manifest["bytes"] / 1e6, 1)
        entry["bytes_per_token"] = round(opened.manifest["bytes"] / tokens, 1)
        entry["hidden_bytes_per_token_per_layer"] = hidden_bytes_per_token_per_layer(opened)
        entry["explained_variance"] = opened.manifest.get("basis", {}).get("explained_variance")
        for seed in args.seeds:
            if str(seed) in entry["seeds"]:
                continue
            out = WORK / f"p4_curve_student_{slug(config)}_{seed}"
            run = distill_student(cache, out, spec, distill_cfg, seed=seed, teacher_dir=teacher, task_config=params.task_config)
            summary = run["summary"]
            scores = evaluate_saved_model(out, cache, batch_size=64, latency_batch_sizes=[], latency_repeats=1)
            state["metric"] = scores["headline"]
            entry["seeds"][str(seed)] = {"dev_metric": scores[scores["headline"]], "train_s": summary["seconds"]}
            STATE.write_text(json.dumps(state, indent=2))
            print(config, seed, entry["seeds"][str(seed)], flush=True)
        STATE.write_text(json.dumps(state, indent=2))

    base = state.get("float16")
    runs = []
    metric = state.get("metric", "accuracy")
    for config in [c for c in args.configs if state.get(c, {}).get("seeds")]:
        entry = state[config]
        seeds = [s for s in args.seeds if str(s) in entry["seeds"]]
        accs = [dev_metric(entry["seeds"][str(s)]) for s in seeds]
        train_s = [entry["seeds"][str(s)]["train_s"] for s in seeds]
        run = {
            "config": config,
            "seeds": seeds,
            **{k: entry[k] for k in ("hidden_bytes_per_token_per_layer", "bytes_per_token", "cache_mb", "extract_s")},
            "extract_runs": entry.get("extract_runs", [entry["extract_s"]]),
            "explained_variance": entry["explained_variance"],
            f"dev_{metric}": accs,
            "mean": round(100 * statistics.mean(accs), 2),
            "std": round(100 * statistics.stdev(accs), 2) if len(accs) > 1 else 0.0,
        }
        if base is not None and all(str(s) in base["seeds"] for s in seeds):  # paired: fp16 on the same seeds
            base_accs = [dev_metric(base["seeds"][str(s)]) for s in seeds]
            base_s = [base["seeds"][str(s)]["train_s"] for s in seeds]
            run["loss_vs_fp16_points"] = round(100 * (statistics.mean(base_accs) - statistics.mean(accs)), 2)
            run["extract_time_vs_fp16"] = round(entry["extract_s"] / base["extract_s"], 3)
            run["train_time_vs_fp16"] = round(statistics.mean(train_s) / statistics.mean(base_s), 3)
        runs.append(run)
        print(json.dumps(run), flush=True)
    result = {
        "figure": f"P4 curve: cache bytes per token vs dev {metric} (fp16, int8, int8 at rank k, relations as inputs)",
        "goal": "SST-2: <= 100 B per token per layer at <= 0.2 point below fp16 (mean of 3 seeds); NER: <= 100 B per "
        "token per layer at <= 0.3 F1 below fp16 (3 seeds); SQuAD: whole cache <= 1,500 B/token at <= 0.5 F1 below fp16",
        "student": args.student,
        "seeds": args.seeds,
        "recipe": {  # the run the curve measures: its rows and epochs (a reduced recipe says so here)
            "task": params.task,
            "rows": {name: len(split) for name, split in splits.items()},
            "epochs": distill_cfg.epochs,
            "gamma": distill_cfg.gamma,  # the hidden-state loss's weight: at 0 the student reads no cached hidden state
        },
        "machine": machine(),
        "runs": runs,
    }
    save(args.name, result)
    svg_chart(
        {f"dev {metric}": [(r["hidden_bytes_per_token_per_layer"], r["mean"]) for r in runs]},
        ROOT / "bench" / "results" / f"{args.name}.svg",
        x_label="stored bytes per token per cached layer",
        y_label=f"{args.student} dev {metric} (%)",
        title=f"{params.task}: cache bytes vs student {metric}",
        lines=False,
    )


if __name__ == "__main__":
    main()
