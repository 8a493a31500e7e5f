"""Extractive question answering (SQuAD v1.1): question + context windows with a doc stride, answer start/end token
labels, the teacher's start and end logits per real token in the cache, span KD over context tokens, and the best
span across a question's windows scored with the official SQuAD v1.1 exact match and F1."""

from dataclasses import dataclass

from pipeline.knobs import knob

IGNORE = -100  # start/end label of a window without labels (transfer rows)
QA_POSITIONS = "qa_positions"  # example, int32 x 2: answer start and end token (0, 0 = [CLS]: not inside this window)
QA_WINDOW = "qa_window"  # example, int32 x 3: the window's question index, its first and last context token
OFFSETS = "offsets"  # token, int32 x 2: character span of a context token in its context; (0, 0) elsewhere
START_LOGITS, END_LOGITS = "start_logits", "end_logits"  # token, float16 x 1
QUESTIONS = "questions"  # the cache table of the dev questions: index, id, context, reference answers
MAX_ANSWER_TOKENS = 30  # the longest span post-processing considers (HF run_qa's max_answer_length)
LABEL_NAMES = ["start", "end"]  # the head's two outputs (BertForQuestionAnswering's num_labels)


@dataclass
class QuestionAnsweringConfig:
    """The `question_answering` section of params.yaml: knobs read only by this task's facets."""

    doc_stride: int = knob(128, "prepare: tokens shared by consecutive windows of a context longer than a window", gt=0)
    max_context_chars: int = knob(
        100_000,
        "prepare: the longest context (characters) accepted; a longer one is refused, naming its question, before it "
        "is tokenized (its windows and memory grow with it; SQuAD's longest is 3,706)",
        gt=0,
    )
