"""The unlabeled transfer set: prepared without labels and without any text of train or dev, cached by the teacher
once, learned from by KD students through the teacher's outputs only, never by hard-label students."""

import json

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from pipeline.cache import TeacherCache
from pipeline.config import DistillConfig, StudentSpec
from pipeline.data import UNLABELED, add_augmented_split
from pipeline.distill import distill_student
from pipeline.errors import PipelineError
from pipeline.losses import hard_label_loss
from pipeline.tasks.sequence_classification.data import prepare_corpus
from tests.conftest import build_cache, data_config

FAST = DistillConfig(epochs=1, batch_size=16, learning_rate=5e-4, logging_steps=2)


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher):
    return BertTokenizerFast.from_pretrained(tiny_teacher)


@pytest.fixture(scope="module")
def with_transfer(sst2_small, tokenizer):
    # the 300-row train file: 100 labeled rows, the rest (minus anything also in train or dev) as transfer texts
    data = data_config(sst2_small, max_train_examples=100, transfer=str(sst2_small / "train.tsv"))
    return prepare_corpus(data, tokenizer, seed=0)


def test_transfer_rows_are_unlabeled_and_never_texts_of_train_or_dev(with_transfer, sst2_small, tokenizer):
    splits, info = with_transfer
    transfer, train = splits["transfer"], splits["train"]
    assert set(transfer["label"]) == {UNLABELED}
    assert not set(transfer["example_id"]) & set(train["example_id"])
    dev_ids = {
        tuple(e)
        for e in tokenizer(
            [line.split("\t")[1] for line in (sst2_small / "dev.tsv").read_text().splitlines()[1:]],
            truncation=True,
            max_length=32,
        )["input_ids"]
    }
    seen = [tuple(e) for e in transfer["input_ids"]]
    assert len(set(seen)) == len(seen) and not set(seen) & ({tuple(e) for e in train["input_ids"]} | dev_ids)
    stats = info["splits"]["transfer"]
    assert stats["rows"] == len(transfer) and stats["rows"] + stats["overlap_removed"] == 300 and 150 < stats["rows"] <= 200


def test_transfer_subset_is_seeded_and_an_exhausted_source_is_refused(sst2_small, tokenizer):
    data = data_config(sst2_small, max_train_examples=100, transfer=str(sst2_small / "train.tsv"), max_transfer_examples=40)
    a, _ = prepare_corpus(data, tokenizer, seed=0)
    b, _ = prepare_corpus(data, tokenizer, seed=0)
    assert len(a["transfer"]) == 40 and a["transfer"]["example_id"] == b["transfer"]["example_id"]
    with pytest.raises(PipelineError, match="no transfer texts left after removing those also in train or dev"):
        prepare_corpus(data_config(sst2_small, transfer=str(sst2_small / "train.tsv")), tokenizer, seed=0)  # all 300 labeled


def test_hard_label_loss_skips_unlabeled_rows_golden():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], requires_grad=True)
    # only rows 0 and 1 are labeled: mean of -log softmax = (log(1+e^-2) + log(1+e^-1)) / 2
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    torch.testing.assert_close(
        hard_label_loss(logits, torch.tensor([0, 1, UNLABELED])), torch.tensor(expected, dtype=torch.float32)
    )
    none = hard_label_loss(logits, torch.tensor([UNLABELED] * 3))
    none.backward()
    assert none.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_kd_students_learn_from_transfer_and_augmented_rows_hard_label_students_never_do(
    tmp_path, tiny_teacher, with_transfer, sst2_small, tokenizer
):
    """The teacher labels the transfer texts and the augmented train texts once (each its own cache split); KD
    students read both, hard-label students and `transfer: false` neither."""
    data = data_config(sst2_small, max_train_examples=100, transfer=str(sst2_small / "train.tsv"), augment_copies=1)
    splits, info = add_augmented_split(dict(with_transfer[0]), json.loads(json.dumps(with_transfer[1])), data, tokenizer, 0)
    cache = tmp_path / "cache"
    build_cache(tiny_teacher, (splits, info), cache)
    split, augment = TeacherCache(cache).split("transfer", ["logits"]), TeacherCache(cache).split("augment", ["logits"])
    assert len(split) == len(with_transfer[0]["transfer"]) and split[0]["label"] == UNLABELED
    assert len(augment) == len(splits["augment"]) > 90 and augment[0]["label"] == UNLABELED
    spec = StudentSpec(num_layers=2, hidden_size=16, num_heads=2, init="random")
    kd = distill_student(cache, tmp_path / "kd", spec, FAST, seed=0)["summary"]
    assert (kd["train_rows"], kd["transfer_rows"], kd["augment_rows"]) == (100, len(split), len(augment))
    hard = DistillConfig(**{**FAST.__dict__, "alpha": 1.0, "beta": 0.0, "gamma": 0.0})
    summary = distill_student(cache, tmp_path / "hard", spec, hard, seed=0)["summary"]
    assert summary["transfer_rows"] == summary["augment_rows"] == 0
    off = DistillConfig(**{**FAST.__dict__, "transfer": False})
    assert distill_student(cache, tmp_path / "off", spec, off, seed=0)["summary"]["augment_rows"] == 0
