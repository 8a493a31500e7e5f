"""The official SQuAD v1.1 evaluation: answer normalisation, exact match and token F1, best over a question's
references."""

from __future__ import annotations

import collections
import re
import string


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict:
    """Exact match and F1 (in [0, 1]), each the best over a question's reference answers, averaged over questions."""
    em = f1 = 0.0
    for qid, truths in references.items():
        pred = predictions.get(qid, "")
        em += max(float(normalize_answer(pred) == normalize_answer(t)) for t in truths)
        f1 += max(f1_score(pred, t) for t in truths)
    n = max(len(references), 1)
    return {"exact_match": em / n, "f1": f1 / n}
