"""How much of each tuning split's text the models have seen: the row-carved split (sessions <= 11) against the
sentence-carved one, with dev as the yardstick.

    python bench/tuning_leak.py NAME=RUN_DIR [NAME=RUN_DIR ...]

RUN_DIR is a finished default run (its data/prepared and data/transfer). For val and dev it gives the median length
in tokens, the share of rows that share a token n-gram (n = 4, 6, 8, special tokens left out) with any row a student
trains on (labelled train + transfer), and the share of rows with a seen row of >= 4 tokens inside them (a labelled
phrase of the row's own sentence). Results: bench/results/issue15/tuning_leak.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline.data import TUNE, load_prepared
from pipeline.tuning import TokenRuns

from common import save

FRAME = {0, 101, 102}  # [PAD] [CLS] [SEP] of the MiniLM / BERT uncased vocabulary


def inner(ds) -> list[list[int]]:
    return [[t for t in e if t not in FRAME] for e in ds["input_ids"]]


def ngrams(rows: list[list[int]], n: int) -> set[tuple]:
    return {tuple(r[i : i + n]) for r in rows for i in range(len(r) - n + 1)}


def holds_seen_phrase(rows: list[list[int]], seen: list[list[int]], min_len: int = 4) -> np.ndarray:
    """Per row: does some seen row of >= min_len tokens lie inside it as a run of tokens?"""
    runs = TokenRuns(rows)
    seen_runs = TokenRuns(seen)
    out = np.zeros(len(rows), dtype=bool)
    for length in np.unique(seen_runs.lengths[seen_runs.lengths >= min_len]):
        hashes, row = runs.runs(int(length))
        out[row[np.isin(hashes, seen_runs.row_hash[seen_runs.lengths == length])]] = True
    return out


def measure(run: Path) -> dict:
    prepared, info = load_prepared(run / "data" / "prepared")
    transfer, _ = load_prepared(run / "data" / "transfer")
    seen = inner(prepared["train"]) + inner(transfer["transfer"])
    grams = {n: ngrams(seen, n) for n in (4, 6, 8)}
    out = {"train_rows": len(prepared["train"]), "transfer_rows": len(transfer["transfer"])}
    for split in (TUNE, "dev"):
        rows = inner(prepared[split])
        shares = {
            f"shares_{n}gram": float(np.mean([any(tuple(r[i : i + n]) in g for i in range(len(r) - n + 1)) for r in rows]))
            for n, g in grams.items()
        }
        out[split] = {
            "rows": len(rows),
            "median_tokens": float(np.median([len(r) + 2 for r in rows])),
            **shares,
            "holds_a_seen_phrase": float(holds_seen_phrase(rows, seen).mean()),
            "source": info["splits"][split]["source"],
        }
    return out


def main() -> None:
    results = {}
    for arg in sys.argv[1:]:
        name, run = arg.split("=", 1)
        results[name] = measure(Path(run))
        for split in (TUNE, "dev"):
            r = results[name][split]
            print(
                f"{name:>10} {split:>3}: {r['rows']} rows, median {r['median_tokens']:.0f} tokens; share with a seen "
                f"4/6/8-gram {r['shares_4gram']:.3f} / {r['shares_6gram']:.3f} / {r['shares_8gram']:.3f}; holds a seen "
                f"phrase of >= 4 tokens {r['holds_a_seen_phrase']:.3f}"
            )
    save("issue15/tuning_leak", results)


if __name__ == "__main__":
    main()
