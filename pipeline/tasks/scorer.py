"""Each task's scorer facet, for the evaluate stage: the metrics of a saved model on the cache's rows."""

from __future__ import annotations

from pipeline.tasks import MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, check_task
from pipeline.tasks.masked_lm.scorer import MaskedLMScorer
from pipeline.tasks.question_answering.scorer import QuestionAnsweringScorer
from pipeline.tasks.sequence_classification.scorer import SequenceClassificationScorer
from pipeline.tasks.token_classification.scorer import TokenClassificationScorer

_BY_TASK = {
    SEQUENCE_CLASSIFICATION: SequenceClassificationScorer(),
    TOKEN_CLASSIFICATION: TokenClassificationScorer(),
    QUESTION_ANSWERING: QuestionAnsweringScorer(),
    MASKED_LM: MaskedLMScorer(),
}


def task_scorer(task: str) -> SequenceClassificationScorer:
    return _BY_TASK[check_task(task)]
