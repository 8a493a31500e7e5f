"""Question answering's fields facet: start and end logits per real token (fp16), window and answer positions,
character offsets; a table of the dev and tuning questions."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from pipeline.cache import FieldSpec
from pipeline.data import TUNE
from pipeline.tasks import QUESTION_ANSWERING
from pipeline.tasks.question_answering import (
    END_LOGITS,
    MAX_ANSWER_TOKENS,
    OFFSETS,
    QA_POSITIONS,
    QA_WINDOW,
    QUESTIONS,
    START_LOGITS,
)
from pipeline.tasks.sequence_classification.fields import SequenceClassificationFields


class QuestionAnsweringFields(SequenceClassificationFields):
    logit_field = START_LOGITS

    def manifest_meta(self, setup) -> dict:
        return {"task": QUESTION_ANSWERING, "max_answer_tokens": MAX_ANSWER_TOKENS}

    def fields(self, setup, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        return [
            FieldSpec(QA_POSITIONS, "example", "int32", 2),
            FieldSpec(QA_WINDOW, "example", "int32", 3),
            FieldSpec(OFFSETS, "token", "int32", 2),
            FieldSpec(START_LOGITS, "token", "float16", 1),
            FieldSpec(END_LOGITS, "token", "float16", 1),
        ]

    def prepared_columns(self) -> list[str]:
        return [QA_POSITIONS, QA_WINDOW, OFFSETS]

    def host_fields(self, setup, input_ids, mask, example_ids, extra: dict):
        return input_ids, {
            QA_POSITIONS: np.stack(extra[QA_POSITIONS]).astype(np.int32),
            QA_WINDOW: np.stack(extra[QA_WINDOW]).astype(np.int32),
            OFFSETS: np.concatenate(extra[OFFSETS]).astype(np.int32).reshape(-1, 2),
        }

    def batch_inputs(self, setup, input_ids: np.ndarray, mask: np.ndarray, example_ids: np.ndarray, extra: dict):
        first = np.asarray([w[1] for w in extra[QA_WINDOW]])
        return {"token_type_ids": ((np.arange(mask.shape[1])[None, :] >= first[:, None]) & mask).astype(np.int64)}, {}

    def device_fields(self, out, tokens, setup) -> dict[str, torch.Tensor]:
        return {
            START_LOGITS: tokens(out.start_logits[..., None]).to(torch.float16),
            END_LOGITS: tokens(out.end_logits[..., None]).to(torch.float16),
        }

    def cache_tables(self, splits: dict) -> dict[str, pa.Table]:
        """The dev (and tuning) questions: index, id, context, reference answers, for scoring from the cache alone."""
        seen, rows = set(), []
        for name in ("dev", TUNE):
            if name not in splits:
                continue
            ds = splits[name]
            for window, qid, context, answers in zip(ds[QA_WINDOW], ds["question_id"], ds["context"], ds["answers"]):
                if window[0] not in seen:
                    seen.add(window[0])
                    rows.append((int(window[0]), qid, context, list(answers)))
        return {
            QUESTIONS: pa.table(
                {
                    "question": pa.array([r[0] for r in rows], pa.int32()),
                    "id": [r[1] for r in rows],
                    "context": [r[2] for r in rows],
                    "answers": pa.array([r[3] for r in rows], pa.list_(pa.string())),
                }
            )
        }
