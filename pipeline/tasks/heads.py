"""What every stage knows of a task's model head: the transformers classes, the head's config keys, which checkpoint
has it, the metric the report ranks by. Plain data: no stage's behaviour lives here."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.tasks import MASKED_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, check_task


@dataclass(frozen=True)
class Head:
    name: str
    architecture: str  # what students are built as, and the saved teacher's architecture
    auto_name: str  # the transformers Auto class that loads it
    pipeline_tag: str
    headline: str  # the metric the report ranks by
    logit_field: str  # the cache field several teachers' logits are averaged in
    label_keys: tuple[str, ...] = ("labels",)  # the batch keys the teacher's Trainer treats as labels

    def auto_class(self):
        import transformers

        return getattr(transformers, self.auto_name)

    def student_class(self):
        import transformers

        return getattr(transformers, self.architecture)

    def head_config(self, label_names: list[str]) -> dict:
        """Config keys of the head for these labels."""
        return {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)},
        }

    def owns(self, config) -> bool:
        """Whether a checkpoint's config has this head."""
        return any(a.endswith(self.architecture.removeprefix("Bert")) for a in getattr(config, "architectures", None) or [])


HEADS = {
    SEQUENCE_CLASSIFICATION: Head(
        SEQUENCE_CLASSIFICATION,
        "BertForSequenceClassification",
        "AutoModelForSequenceClassification",
        "text-classification",
        "accuracy",
        "logits",
    ),
    TOKEN_CLASSIFICATION: Head(
        TOKEN_CLASSIFICATION,
        "BertForTokenClassification",
        "AutoModelForTokenClassification",
        "token-classification",
        "f1",
        "token_logits",
    ),
    QUESTION_ANSWERING: Head(
        QUESTION_ANSWERING,
        "BertForQuestionAnswering",
        "AutoModelForQuestionAnswering",
        "question-answering",
        "f1",
        "start_logits",
        ("start_positions", "end_positions"),
    ),
    MASKED_LM: Head(MASKED_LM, "BertForMaskedLM", "AutoModelForMaskedLM", "fill-mask", "accuracy", "logits"),
}


def head_of(task: str) -> Head:
    return HEADS[check_task(task)]


def head_of_model(config) -> Head:
    """The head a checkpoint has (by its config's architectures); sequence classification by default."""
    return next(
        (h for h in HEADS.values() if h.name != SEQUENCE_CLASSIFICATION and h.owns(config)), HEADS[SEQUENCE_CLASSIFICATION]
    )
