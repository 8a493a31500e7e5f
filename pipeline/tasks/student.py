"""Each task's student facet, for the distill stage: cache columns, batches and the logit-level loss."""

from __future__ import annotations

from pipeline.tasks import MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, check_task
from pipeline.tasks.masked_lm.student import MaskedLMStudent
from pipeline.tasks.question_answering.student import QuestionAnsweringStudent
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent
from pipeline.tasks.token_classification.student import TokenClassificationStudent

_BY_TASK = {
    SEQUENCE_CLASSIFICATION: SequenceClassificationStudent,
    TOKEN_CLASSIFICATION: TokenClassificationStudent,
    QUESTION_ANSWERING: QuestionAnsweringStudent,
    MASKED_LM: MaskedLMStudent,
}


def task_student(task: str, config=None) -> SequenceClassificationStudent:
    """The facet of `task`, built with its params section (`Params.task_config`), or that section's defaults."""
    return _BY_TASK[check_task(task)](config)
