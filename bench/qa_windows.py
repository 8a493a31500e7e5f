"""Where does a SQuAD student lose F1 against its teacher: inside a window, or in choosing between a question's windows?

    python bench/qa_windows.py --cache artifacts/cache --models teacher=artifacts/teacher l3=artifacts/students/l3 \
        [--out bench/results/issue11-qa/windows.json]

A context longer than one window (`max_length`, `doc_stride`) is split into several; evaluation takes the best start +
end logit span over all of a question's windows, so it compares raw logits *across* windows. The KD losses match the
teacher's distribution *within* a window (KL is blind to a per-window logit shift), so a student could extract well
inside each window and still pick the wrong window. For each model and split (the tuning split `val` and dev) this
scores the questions with one window and those with several apart, and for the latter also an oracle that takes, per
question, the window whose own best span scores the highest F1: oracle − actual is the F1 lost to choosing windows.
`--rule probabilities` ranks spans by per-window log-probabilities instead of raw logits, to see whether another
prediction rule would choose windows better.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.cache import TeacherCache  # noqa: E402
from pipeline.data import TUNE  # noqa: E402
from pipeline.metrics import _load_classifier, _split_rows  # noqa: E402
from pipeline.tasks.question_answering import (  # noqa: E402
    OFFSETS,
    QA_WINDOW,
    QUESTIONS,
    best_span,
    f1_score,
    span_logits,
)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def window_scores(model, cache, split: str, rule: str = "logits") -> dict[str, list[tuple[float, float]]]:
    """Per question id, each window's (best-span score, F1 of that span against the best reference). `rule` ranks
    spans by start + end logit (`logits`, what evaluation does) or by log p(start) + log p(end) under each window's
    softmax over its real tokens, [CLS] included (`probabilities`: a window the model thinks lacks the answer puts
    its mass on [CLS] and ranks low)."""
    table = cache.table(QUESTIONS).to_pydict()
    by_index = {q: (i, c, a) for q, i, c, a in zip(table["question"], table["id"], table["context"], table["answers"])}
    rows, tokens = _split_rows(cache, split)
    firsts = [int(r[QA_WINDOW][1]) for r in rows]
    starts, ends = span_logits(model, tokens, firsts, 64, model.config.pad_token_id or 0)
    out: dict[str, list[tuple[float, float]]] = {}
    if rule == "probabilities":
        starts, ends = [log_softmax(x) for x in starts], [log_softmax(x) for x in ends]
    for r, s, e in zip(rows, starts, ends):
        qid, context, answers = by_index[int(r[QA_WINDOW][0])]
        score, a, b = best_span(s, e, int(r[QA_WINDOW][1]), int(r[QA_WINDOW][2]))
        offsets = np.asarray(r[OFFSETS]).reshape(-1, 2)
        text = context[offsets[a][0] : offsets[b][1]]
        out.setdefault(qid, []).append((score, max(f1_score(text, t) for t in answers)))
    return out


def summarise(per_question: dict[str, list[tuple[float, float]]]) -> dict:
    picked = {q: max(w, key=lambda x: x[0])[1] for q, w in per_question.items()}  # what evaluation picks
    single = [picked[q] for q, w in per_question.items() if len(w) == 1]
    actual = [picked[q] for q, w in per_question.items() if len(w) > 1]
    oracle = [max(f for _, f in w) for w in per_question.values() if len(w) > 1]
    return {
        "per_question_f1": picked,
        "questions": len(per_question),
        "f1": round(100 * float(np.mean(list(picked.values()))), 2),
        "single_window_questions": len(single),
        "single_window_f1": round(100 * float(np.mean(single)), 2),
        "multi_window_questions": len(actual),
        "multi_window_f1": round(100 * float(np.mean(actual)), 2),
        "multi_window_oracle_f1": round(100 * float(np.mean(oracle)), 2),
        "lost_to_window_choice": round(100 * float(np.mean(oracle) - np.mean(actual)), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="artifacts/cache")
    ap.add_argument("--models", nargs="+", required=True, help="name=dir pairs; the first is the reference (teacher)")
    ap.add_argument("--rule", choices=("logits", "probabilities"), default="logits", help="how spans are ranked")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cache = TeacherCache(Path(args.cache), verify="lazy")
    splits = [s for s in (TUNE, "dev") if s in cache.splits]
    result: dict = {}
    for pair in args.models:
        name, model_dir = pair.split("=", 1)
        model = _load_classifier(Path(model_dir))
        result[name] = {split: summarise(window_scores(model, cache, split, args.rule)) for split in splits}
        print(name, {split: result[name][split]["f1"] for split in splits}, flush=True)
    reference = args.models[0].split("=", 1)[0]
    for name in list(result)[1:]:
        for split in splits:
            mine, ref = result[name][split], result[reference][split]
            mine["retention"] = {
                k: round(100 * mine[k] / ref[k], 1)
                for k in ("f1", "single_window_f1", "multi_window_f1", "multi_window_oracle_f1")
            }
            # the F1 gap to the reference, paired by question, with a normal 95% interval
            diff = 100 * np.array([ref["per_question_f1"][q] - mine["per_question_f1"][q] for q in ref["per_question_f1"]])
            half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
            mine["gap_to_reference"] = [
                round(diff.mean(), 2),
                round(diff.mean() - half, 2),
                round(diff.mean() + half, 2),
            ]
        if len(splits) == 2:  # is the gap on dev larger than on val? (independent questions)
            gaps = [result[name][split]["gap_to_reference"] for split in splits]
            se = np.hypot(*[(g[2] - g[1]) / (2 * 1.96) for g in gaps])
            delta = gaps[1][0] - gaps[0][0]
            result[name]["dev_gap_minus_val_gap"] = [round(delta, 2), round(delta - 1.96 * se, 2), round(delta + 1.96 * se, 2)]
    for name in result:
        for split in splits:
            result[name][split].pop("per_question_f1")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
