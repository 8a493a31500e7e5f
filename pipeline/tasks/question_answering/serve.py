"""Serving a saved QA model (teacher or student): a question and a context in, the best answer out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.onnx_models import load_exported
from pipeline.tasks.question_answering.data import window_questions
from pipeline.tasks.question_answering.postprocess import best_span, span_logits
from pipeline.tasks.question_answering.squad import Question, check_question


class QuestionAnswerer:
    """Answers a question from a context with a saved QA model (teacher or student): what
    `pipeline("question-answering")` did before transformers 5 removed that pipeline. The context is split into the
    same windows as in training and the best span over all of them is returned, as evaluation scores it.

    >>> qa = QuestionAnswerer("artifacts/students/l3")
    >>> qa("Who won?", "The Denver Broncos won the game.")
    {'answer': 'The Denver Broncos', 'start': 0, 'end': 18, 'score': 11.2}

    `runtime` "onnx" or "onnx_int8" serves the exported model of an export dir (`artifacts/exports/l3`) through
    ONNX Runtime instead.
    """

    def __init__(
        self, model_dir: str | Path, max_length: int = 384, doc_stride: int = 128, batch_size: int = 16, runtime: str = "pytorch"
    ):
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if runtime == "pytorch":
            self.model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
        else:
            self.model = load_exported(Path(model_dir), runtime)
        self.max_length = min(max_length, self.model.config.max_position_embeddings)
        self.doc_stride, self.batch_size = doc_stride, batch_size

    def __call__(self, question: str, context: str) -> dict:
        q = Question("question", question, context, where="the question")
        check_question(q, labeled=False)
        rows, _ = window_questions([q], self.tokenizer, self.max_length, self.doc_stride, labeled=False)
        pad = self.tokenizer.pad_token_id or 0
        starts, ends = span_logits(self.model, [np.asarray(r[0]) for r in rows], [r[2] for r in rows], self.batch_size, pad)
        score, a, b, offsets = max(
            (best_span(s, e, r[2], r[3]) + (r[4],) for r, s, e in zip(rows, starts, ends)), key=lambda x: x[0]
        )
        start, end = offsets[a][0], offsets[b][1]
        return {"answer": context[start:end], "start": start, "end": end, "score": round(score, 4)}
