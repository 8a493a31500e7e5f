"""Question answering's scorer facet: the best span of each question over its windows, scored with SQuAD v1.1 exact
match and F1 against the cache's questions table."""

from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.tasks.question_answering import OFFSETS, QA_WINDOW, QUESTIONS
from pipeline.tasks.question_answering.postprocess import predict_answers, span_logits
from pipeline.tasks.question_answering.squad_metric import squad_metrics
from pipeline.tasks.sequence_classification.scorer import SequenceClassificationScorer


class QuestionAnsweringScorer(SequenceClassificationScorer):
    def columns(self, manifest: dict | None = None) -> list[str]:
        return [QA_WINDOW, OFFSETS]

    def score(self, model, rows, tokens, batch_size: int, pad_id: int, cache=None) -> dict:
        if cache is None:
            raise PipelineError("question answering is scored against the cache's questions table; pass the cache")
        table = cache.table(QUESTIONS).to_pydict()
        by_index = {q: (qid, c, a) for q, qid, c, a in zip(table["question"], table["id"], table["context"], table["answers"])}
        starts, ends = span_logits(model, tokens, [int(r[QA_WINDOW][1]) for r in rows], batch_size, pad_id)
        windows = []
        for r in rows:
            qid, context, _ = by_index[int(r[QA_WINDOW][0])]
            windows.append(
                {
                    "id": qid,
                    "context": context,
                    "first": int(r[QA_WINDOW][1]),
                    "last": int(r[QA_WINDOW][2]),
                    "offsets": r[OFFSETS],
                }
            )
        asked = {int(r[QA_WINDOW][0]) for r in rows}  # one split's questions (the table holds dev's and val's)
        references = {by_index[q][0]: list(by_index[q][2]) for q in sorted(asked)}
        scores = squad_metrics(predict_answers(windows, starts, ends), references)
        return {"metric": "SQuAD v1.1 F1", **scores, "questions": len(references)}
