"""(Session 11, on the row-carved tuning split that the sentence carve of `pipeline/tuning.py` replaced; kept to
reproduce bench/README's issue-15 figures. bench/tuning_leak.py compares the two carves.)

Would a sentence-like tuning split have agreed with dev? Issue 15's five-seed students scored on a second tuning
split: unused labelled SST-2 train rows drawn to follow dev's length histogram.

    python bench/val_check.py [--base bench/work/seeds5] [--seeds bench/work/issue15/seeds] [--n 2000]

The carved tuning split of the default run is a uniform draw from SST-2 train rows, mostly phrases (median 10 tokens),
while dev (and SST-2 test) are full sentences (median 25). This bench draws `--n` labelled SST-2 train rows that no
model has trained on — not in the default run's 14,000-row labelled subset (its 12,000 train rows and 2,000 carved
val rows), not among its 24,000 transfer texts, not in dev — following dev's length histogram (bins of 4 tokens). It also counts how many of
the unused rows share no token n-gram with any row the models saw (the SST-2 train file holds every phrase of each
parse tree, so a row's source sentence usually has other phrases in the seen rows). Then it scores, on those rows and on dev: the teacher,
the second teacher `t43`, their logit average, and every seed run of the students in `--seeds` (built by
`bash bench/issue15.sh seeds`), and gives the paired KD − baseline difference over seeds with the report's 95%
t-interval. The training never looked at any tuning split (no best-epoch selection), so scoring finished models on a
new one is fair. Results: bench/results/issue15/val_check.json.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import datasets
import numpy as np
import torch

from pipeline.data import TUNE, prepare_corpus
from pipeline.models import load_classifier, load_tokenizer, seed_model_dirs
from pipeline.params import load_params
from pipeline.report import paired_difference

from common import ROOT, save


@torch.inference_mode()
def logits(model_dir: Path, rows: datasets.Dataset, batch_size: int = 128) -> np.ndarray:
    model = load_classifier(str(model_dir)).eval()
    pad = load_tokenizer(str(model_dir)).pad_token_id
    ids, out = rows["input_ids"], []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        width = max(map(len, chunk))
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, e in enumerate(chunk):
            x[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
        out.append(model(input_ids=x, attention_mask=mask).logits.float().numpy())
    return np.concatenate(out)


def dev_lengths(rows: datasets.Dataset, candidates: np.ndarray, dev: datasets.Dataset, width: int = 4) -> np.ndarray:
    """Sampling probabilities over `candidates` whose length histogram (bins of `width` tokens) is dev's."""
    bins = np.asarray(rows["length"])[candidates] // width
    dev_bins = np.asarray(dev["length"]) // width
    size = int(max(bins.max(), dev_bins.max())) + 1
    have = np.bincount(bins, minlength=size).astype(float)
    want = np.bincount(dev_bins, minlength=size).astype(float)
    weights = np.divide(want, have, out=np.zeros(size), where=have > 0)[bins]
    return weights / weights.sum()


def unseen_ngrams(rows: datasets.Dataset, candidates: np.ndarray, seen: set[tuple], n: int) -> dict:
    """How many candidate rows (of >= n inner tokens) share no inner-token n-gram with any seen row, and their median
    length: the rows a sentence-disjoint tuning split could still use."""
    grams = {r[1:-1][i : i + n] for r in seen for i in range(len(r) - 2 - n + 1)}
    ids = rows["input_ids"]
    free = [
        len(e)
        for e in (tuple(ids[int(i)])[1:-1] for i in candidates)
        if len(e) >= n and not any(e[i : i + n] in grams for i in range(len(e) - n + 1))
    ]
    return {
        "rows": len(free),
        "median_tokens": float(np.median(free)) + 2 if free else None,
        "at_least_20_tokens": sum(x + 2 >= 20 for x in free),
    }


def accuracy(z: np.ndarray, rows: datasets.Dataset) -> float:
    return float(np.mean(z.argmax(-1) == np.asarray(rows["label"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=ROOT / "bench/work/seeds5")
    ap.add_argument("--seeds", type=Path, default=ROOT / "bench/work/issue15/seeds")
    ap.add_argument("--teachers", type=Path, default=ROOT / "bench/work/issue15/teachers/teachers")
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()

    params = load_params(args.base / "params.yaml")
    base_data = dataclasses.replace(params.data, train=str(args.base / params.data.train), dev=str(args.base / params.data.dev))
    data = dataclasses.replace(base_data, max_train_examples=None, val_examples=0, transfer=None)
    tokenizer = load_tokenizer(str(args.base / "artifacts/teacher"))
    prepared, _ = prepare_corpus(data, tokenizer, seed=params.seed)  # every labelled train row, and dev
    rows, dev = prepared["train"], prepared["dev"]
    carved = datasets.load_from_disk(str(args.base / "data/prepared" / TUNE))
    seen = {
        tuple(e)
        for part in ("data/prepared/train", "data/prepared/val", "data/transfer/transfer")
        for e in datasets.load_from_disk(str(args.base / part))["input_ids"]
    }
    seen |= {tuple(e) for e in dev["input_ids"]}
    unused = np.array([i for i, e in enumerate(rows["input_ids"]) if tuple(e) not in seen], dtype=np.int64)
    sent = rows.select(
        np.sort(np.random.default_rng(params.seed + 2).choice(unused, args.n, replace=False, p=dev_lengths(rows, unused, dev)))
    )
    leak = {n: unseen_ngrams(rows, unused, seen, n) for n in (4, 6, 8)}
    print(f"{len(unused)} unused labelled rows; sharing no n-gram with a seen row: {leak}")
    splits = {"val_sentences": sent, "val": carved, "dev": dev}
    lengths = {name: float(np.median(ds["length"])) for name, ds in splits.items()}
    print(f"{len(sent)} new tuning rows; median tokens: {lengths}")

    models: dict[str, dict] = {}

    def score(name: str, runs: list[tuple[int | None, Path]]) -> list[dict[str, np.ndarray]]:
        """Every run's accuracy on each split into `models[name]`; returns the runs' logits."""
        z = [{k: logits(d, ds) for k, ds in splits.items()} for _, d in runs]
        m = {"seeds": [s for s, _ in runs]}
        for key, ds in splits.items():
            m[f"{key}_accuracy_per_seed"] = [accuracy(run[key], ds) for run in z]
            m[f"{key}_accuracy"] = float(np.mean(m[f"{key}_accuracy_per_seed"]))
        m["accuracy_per_seed"], m["accuracy"] = m["dev_accuracy_per_seed"], m["dev_accuracy"]
        models[name] = m
        print(name, {k: round(100 * m[f"{k}_accuracy"], 2) for k in splits}, f"({len(runs)} runs)")
        return z

    (t42,) = score("teacher", [(None, args.base / "artifacts/teacher")])
    (t43,) = score("teacher-t43", [(None, args.teachers / "t43")])
    ens = {k: accuracy((t42[k] + t43[k]) / 2, ds) for k, ds in splits.items()}
    models["teacher-ensemble"] = {f"{k}_accuracy": v for k, v in ens.items()}
    print("teacher-ensemble", {k: round(100 * v, 2) for k, v in ens.items()})
    for student in sorted(p.name for p in (args.seeds / "students").iterdir()):
        score(student, seed_model_dirs(args.seeds / "students" / student))

    comparisons = {}
    for kd in (n for n in models if n.startswith("l3") and n != "l3_hard"):
        comparisons[f"{kd} - l3_hard"] = {
            split: paired_difference(models[kd], models["l3_hard"], split) for split in ("val_sentences", "val", "dev")
        }
        print(
            kd,
            "- l3_hard:",
            {
                s: c and {k: (round(v, 2) if v is not None else None) for k, v in c.items()}
                for s, c in comparisons[f"{kd} - l3_hard"].items()
            },
        )
    save(
        "issue15/val_check",
        {
            "tuning_rows": len(sent),
            "unused_rows": len(unused),
            "median_tokens": lengths,
            "unused_rows_sharing_no_ngram_with_seen_rows": leak,
            "models": models,
            "kd_minus_baseline": comparisons,
        },
    )


if __name__ == "__main__":
    main()
