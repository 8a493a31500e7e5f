"""Prepared splits as torch datasets for the Trainer: rows of token ids with their labels."""

from __future__ import annotations

import torch


class TokenDataset(torch.utils.data.Dataset):
    """Prepared rows (input_ids, label) for a Trainer."""

    def __init__(self, ds):
        self.ids, self.labels = ds["input_ids"], ds["label"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class TextDataset(TokenDataset):
    """Prepared rows as token ids only, for masked-LM fine-tuning (the collator masks them and makes the labels)."""

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}
