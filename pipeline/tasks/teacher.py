"""Each task's teacher facet: the Trainer arguments of fine-tuning the teacher."""

from __future__ import annotations

from pipeline.tasks import MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, check_task
from pipeline.tasks.masked_lm.teacher import MaskedLMTeacher
from pipeline.tasks.question_answering.teacher import QuestionAnsweringTeacher
from pipeline.tasks.sequence_classification.teacher import SequenceClassificationTeacher
from pipeline.tasks.token_classification.teacher import TokenClassificationTeacher

_BY_TASK = {
    SEQUENCE_CLASSIFICATION: SequenceClassificationTeacher(),
    TOKEN_CLASSIFICATION: TokenClassificationTeacher(),
    QUESTION_ANSWERING: QuestionAnsweringTeacher(),
    MASKED_LM: MaskedLMTeacher(),
}


def task_teacher(task: str) -> SequenceClassificationTeacher:
    return _BY_TASK[check_task(task)]
