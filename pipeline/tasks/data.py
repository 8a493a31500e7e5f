"""Each task's data facet, for the prepare stage (a masked LM reads its texts as sequence classification does)."""

from __future__ import annotations

from pipeline.tasks import MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, check_task
from pipeline.tasks.question_answering.data import QuestionAnsweringData
from pipeline.tasks.sequence_classification.data import SequenceClassificationData
from pipeline.tasks.token_classification.data import TokenClassificationData

_BY_TASK = {
    SEQUENCE_CLASSIFICATION: SequenceClassificationData,
    TOKEN_CLASSIFICATION: TokenClassificationData,
    QUESTION_ANSWERING: QuestionAnsweringData,
    MASKED_LM: SequenceClassificationData,
}


def task_data(task: str, config=None) -> SequenceClassificationData:
    """The facet of `task`, built with its params section (`Params.task_config`), or that section's defaults."""
    return _BY_TASK[check_task(task)](config)
