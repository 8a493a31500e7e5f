"""Token classification's teacher facet: tagged rows, DataCollatorForTokenClassification, entity F1 per epoch."""

from __future__ import annotations

import torch

from pipeline.tasks.sequence_classification.teacher import SequenceClassificationTeacher
from pipeline.tasks.token_classification import TOKEN_LABELS
from pipeline.tasks.token_classification.metrics import trainer_metrics


class TaggedDataset(torch.utils.data.Dataset):
    """Prepared rows (input_ids, token labels) for the teacher's Trainer."""

    def __init__(self, ds):
        self.ids, self.labels = ds["input_ids"], ds[TOKEN_LABELS]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class TokenClassificationTeacher(SequenceClassificationTeacher):
    def trainer_kwargs(self, tokenizer, splits: dict, label_names: list[str]) -> dict:
        from transformers import DataCollatorForTokenClassification

        return {
            "train_dataset": TaggedDataset(splits["train"]),
            "eval_dataset": TaggedDataset(splits["dev"]),
            "data_collator": DataCollatorForTokenClassification(tokenizer),
            **self.trainer_metrics(label_names),
        }

    def trainer_metrics(self, label_names: list[str]) -> dict:
        return trainer_metrics(label_names)
