"""Question answering's teacher facet: windows with segment ids and start/end labels; SQuAD EM and F1 per epoch."""

from __future__ import annotations

import datasets
import numpy as np
import torch

from pipeline.tasks.question_answering import OFFSETS, QA_POSITIONS, QA_WINDOW
from pipeline.tasks.question_answering.postprocess import predict_answers
from pipeline.tasks.question_answering.squad_metric import squad_metrics
from pipeline.tasks.sequence_classification.teacher import SequenceClassificationTeacher


def dev_windows(ds: datasets.Dataset) -> list[dict]:
    """A prepared dev split's windows as predict_answers wants them."""
    return [
        {"id": qid, "context": c, "first": int(w[1]), "last": int(w[2]), "offsets": np.asarray(o).reshape(-1, 2), "length": n}
        for qid, c, w, o, n in zip(ds["question_id"], ds["context"], ds[QA_WINDOW], ds[OFFSETS], ds["length"])
    ]


def question_references(ds: datasets.Dataset) -> dict[str, list[str]]:
    return {qid: list(a) for qid, a in zip(ds["question_id"], ds["answers"])}


class WindowDataset(torch.utils.data.Dataset):
    """Prepared windows (input_ids, segment ids, start/end labels) for the teacher's Trainer."""

    def __init__(self, ds):
        self.ids, self.window, self.positions = ds["input_ids"], ds[QA_WINDOW], ds[QA_POSITIONS]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids, first = self.ids[i], self.window[i][1]
        return {
            "input_ids": ids,
            "token_type_ids": [int(k >= first) for k in range(len(ids))],
            "start_positions": self.positions[i][0],
            "end_positions": self.positions[i][1],
        }


class QuestionAnsweringTeacher(SequenceClassificationTeacher):
    def trainer_kwargs(self, tokenizer, splits: dict, label_names: list[str]) -> dict:
        from transformers import DataCollatorWithPadding

        dev = splits["dev"]
        windows = dev_windows(dev)
        references = question_references(dev)

        def compute(eval_pred) -> dict:
            start, end = eval_pred.predictions[:2]
            lengths = [w["length"] for w in windows]
            answers = predict_answers(windows, [s[:n] for s, n in zip(start, lengths)], [e[:n] for e, n in zip(end, lengths)])
            scores = squad_metrics(answers, references)
            return scores

        return {
            "train_dataset": WindowDataset(splits["train"]),
            "eval_dataset": WindowDataset(dev),
            "data_collator": DataCollatorWithPadding(tokenizer),
            "compute_metrics": compute,
        }

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return {}  # students: dev loss per epoch; the evaluate stage scores spans
