"""From model outputs to answers, as HF's utils_qa does: segment ids and context masks of question-first windows, the
best span of a window, the best answer of a question over its windows, and start/end logits of a model."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.scoring import length_ordered_outputs
from pipeline.tasks.question_answering import MAX_ANSWER_TOKENS


def token_type_ids(first_context: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """BERT segment ids of question-first windows: 1 from the first context token on (the last [SEP] included)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]
    return ((positions >= first_context[:, None]) & attention_mask.bool()).long()


def context_mask(window: torch.Tensor, width: int) -> torch.Tensor:
    """(batch, width) True at each window's context tokens (window = question index, first, last)."""
    positions = torch.arange(width)[None, :]
    return (positions >= window[:, 1:2]) & (positions <= window[:, 2:3])


def best_span(start: np.ndarray, end: np.ndarray, first: int, last: int, max_tokens: int = MAX_ANSWER_TOKENS):
    """(score, start, end) of the highest start + end logit over spans inside [first, last] with start <= end <
    start + max_tokens: every valid span is considered (n-best with n = all)."""
    s, e = start[first : last + 1].astype(np.float64), end[first : last + 1].astype(np.float64)
    n = len(s)
    scores = s[:, None] + e[None, :]
    i, j = np.indices((n, n))
    scores[(j < i) | (j >= i + max_tokens)] = -np.inf
    flat = int(np.argmax(scores))
    return float(scores.flat[flat]), first + flat // n, first + flat % n


def predict_answers(windows: list[dict], start_logits: list[np.ndarray], end_logits: list[np.ndarray]) -> dict[str, str]:
    """Per question id, the context substring of the best span over all of its windows. `windows[k]` has the window's
    question id, context, first/last context token and offsets (tokens x 2)."""
    best: dict[str, tuple[float, str]] = {}
    for w, s, e in zip(windows, start_logits, end_logits):
        score, a, b = best_span(s, e, w["first"], w["last"])
        text = w["context"][w["offsets"][a][0] : w["offsets"][b][1]]
        if w["id"] not in best or score > best[w["id"]][0]:
            best[w["id"]] = (score, text)
    return {qid: text for qid, (_, text) in best.items()}


@torch.no_grad()
def span_logits(model, token_lists: list[np.ndarray], firsts: list[int], batch_size: int, pad_id: int):
    """Start and end logits of each window (its real tokens), batched in length order."""
    starts: list[np.ndarray] = [np.zeros(0)] * len(token_lists)
    ends: list[np.ndarray] = [np.zeros(0)] * len(token_lists)

    def segments(rows, mask):
        return {"token_type_ids": token_type_ids(torch.tensor([firsts[r] for r in rows]), mask)}

    for rows, out in length_ordered_outputs(model, token_lists, batch_size, pad_id, segments):
        s, e = out.start_logits.float().numpy(), out.end_logits.float().numpy()
        for j, r in enumerate(rows):
            starts[r], ends[r] = s[j, : len(token_lists[r])], e[j, : len(token_lists[r])]
    return starts, ends
