"""Each task's fields facet, for the extract stage: the cache fields of the teacher's logit-level outputs."""

from __future__ import annotations

from pipeline.tasks import MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, check_task
from pipeline.tasks.masked_lm.fields import MaskedLMFields
from pipeline.tasks.question_answering.fields import QuestionAnsweringFields
from pipeline.tasks.sequence_classification.fields import SequenceClassificationFields
from pipeline.tasks.token_classification.fields import TokenClassificationFields

_BY_TASK = {
    SEQUENCE_CLASSIFICATION: SequenceClassificationFields,
    TOKEN_CLASSIFICATION: TokenClassificationFields,
    QUESTION_ANSWERING: QuestionAnsweringFields,
    MASKED_LM: MaskedLMFields,
}


def task_fields(task: str, config=None) -> SequenceClassificationFields:
    """The facet of `task`, built with its params section (`Params.task_config`), or that section's defaults."""
    return _BY_TASK[check_task(task)](config)
