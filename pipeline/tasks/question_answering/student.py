"""Question answering's student facet: window labels, segment ids and context masks; span KD over context tokens."""

from __future__ import annotations

import torch

from pipeline.cache.rows import Rows
from pipeline.losses import LossMix, hard_label_loss, hidden_state_loss, logit_loss
from pipeline.tasks.question_answering import END_LOGITS, QA_POSITIONS, QA_WINDOW, START_LOGITS
from pipeline.tasks.question_answering.postprocess import context_mask, token_type_ids
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent


def span_distillation_loss(out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix) -> tuple:
    """alpha * CE of the gold start and end tokens over a window's real tokens + beta * the logit loss (T^2 KL by
    default) of one distribution over the window's context tokens, for start and for end, + gamma * hidden; start
    and end are averaged (they are stacked as rows). Windows with IGNORE labels (transfer rows) skip the CE."""
    lowest = torch.finfo(torch.float32).min
    student = torch.cat([out.start_logits, out.end_logits]).float()
    real = attention_mask.bool().repeat(2, 1)
    context = teacher["context_mask"].repeat(2, 1)
    parts = {}
    total = student.new_zeros(())
    if mix.alpha:
        parts["ce"] = hard_label_loss(student.masked_fill(~real, lowest), torch.cat([labels[:, 0], labels[:, 1]]))
        total = total + mix.alpha * parts["ce"]
    if mix.beta:
        t = teacher["teacher_logits"]
        soft = logit_loss(
            mix.logit_kind,
            student.masked_fill(~context, lowest if mix.logit_kind != "mse" else 0.0),
            torch.cat([t[..., 0], t[..., 1]]).masked_fill(~context, lowest if mix.logit_kind != "mse" else 0.0),
            mix.temperature,
        )
        parts["kl" if mix.logit_kind == "kl" else mix.logit_kind] = soft
        total = total + mix.beta * soft
    if mix.gamma and hidden_pairs:
        parts["hidden"] = hidden_state_loss(hidden_pairs, attention_mask, mix.hidden_kind)
        total = total + mix.gamma * parts["hidden"]
    return total, parts


class QuestionAnsweringStudent(SequenceClassificationStudent):
    logit_field = START_LOGITS

    def cache_columns(self) -> list[str]:
        return [QA_POSITIONS, QA_WINDOW, START_LOGITS, END_LOGITS]

    def collate(self, rows: Rows, width: int) -> dict[str, torch.Tensor]:
        window = rows.stacked(QA_WINDOW, torch.long)
        mask = torch.arange(width)[None, :] < torch.from_numpy(rows.lengths)[:, None]
        return {
            "labels": rows.stacked(QA_POSITIONS, torch.long),
            "token_type_ids": token_type_ids(window[:, 1], mask),
            "context_mask": context_mask(window, width),
            "teacher_logits": torch.cat(
                [
                    rows.padded(START_LOGITS, width, 0.0, torch.float32),
                    rows.padded(END_LOGITS, width, 0.0, torch.float32),
                ],
                -1,
            ),
        }

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, training: bool):
        return span_distillation_loss(out, labels, teacher, hidden_pairs, attention_mask, mix)

    def returns_logits(self, training: bool) -> bool:
        return False  # start/end logits; the evaluate stage scores spans, the Trainer reports dev loss

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return {}  # students: dev loss per epoch; the evaluate stage scores spans
