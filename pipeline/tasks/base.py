"""The Task seam: everything that differs between task shapes, behind one interface the stages call.

A task owns: its data (reading and validating a split, tokenisation, label alignment), the teacher's head (the Auto
class, the BERT class students are built as, the `transformers.pipeline` name), the cache fields of its logit-level
teacher outputs and the host-side fields written beside them, the batch a student trains on, its logit-level KD loss,
its metrics and the report's headline metric. The hidden-state, attention and value losses are shared by every task
and stay in `pipeline.kd`.

`SequenceClassification` below is both the default task and the base the others override.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.cache import FieldSpec
from pipeline.losses import LossMix, distillation_loss


class Task:
    """Sequence classification: one label per example; the cache keeps the teacher's logits per example."""

    name = "sequence_classification"
    architecture = "BertForSequenceClassification"  # what students are built as, and the saved teacher's architecture
    pipeline_tag = "text-classification"
    headline = "accuracy"  # the metric the report ranks by
    logit_field = "logits"
    label_keys = ["labels"]  # the batch keys the teacher's Trainer treats as labels

    # ---- models ---------------------------------------------------------------------------------------------------
    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def student_class(self):
        from transformers import BertForSequenceClassification

        return BertForSequenceClassification

    def head_config(self, label_names: list[str]) -> dict:
        """Config keys of the task's head for these labels."""
        return {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)},
        }

    def owns(self, config) -> bool:
        """Whether a checkpoint's config has this task's head."""
        return any(a.endswith(self.architecture.removeprefix("Bert")) for a in getattr(config, "architectures", None) or [])

    # ---- stage one: data -------------------------------------------------------------------------------------------
    def prepare(self, data, tokenizer, seed: int):
        """Read, validate and tokenize the train and dev (and transfer) splits: (splits, info)."""
        from pipeline.data import prepare_corpus

        return prepare_corpus(data, tokenizer, seed)

    def tuning_split(self, splits: dict, info: dict, data, seed: int):
        """The tuning split `val` (`pipeline.data.add_tuning_split`), for a task whose prepare has not made it."""
        from pipeline.data import add_tuning_split

        return add_tuning_split(splits, info, data, seed, self.split_fingerprint)

    def split_fingerprint(self, ds) -> str:
        """The digest of a prepared split (what its cache rows derive from) the manifest records."""
        from pipeline.data import split_fingerprint

        return split_fingerprint(ds)

    # ---- stage one: teacher fine-tuning ----------------------------------------------------------------------------
    def teacher_trainer_kwargs(self, tokenizer, splits: dict, cfg, seed: int, label_names: list[str]) -> dict:
        """The Trainer arguments that differ by task: datasets, collator, metrics."""
        from transformers import DataCollatorWithPadding

        from pipeline.scoring import accuracy_metrics
        from pipeline.torch_datasets import TokenDataset

        return {
            "train_dataset": TokenDataset(splits["train"]),
            "eval_dataset": TokenDataset(splits["dev"]),
            "data_collator": DataCollatorWithPadding(tokenizer),
            "compute_metrics": accuracy_metrics,
        }

    # ---- stage one: extraction -------------------------------------------------------------------------------------
    def extract_setup(self, cfg, model, tokenizer, teacher_dir, seed: int) -> dict | None:
        """Task state the extraction loop needs (masking settings of a masked-LM teacher); None when there is none."""
        return None

    def manifest_meta(self, setup: dict | None, cfg) -> dict:
        """Manifest keys of the task. A sequence classifier's cache carries none, so its manifest (and bytes) stay as
        they were before tasks existed; every other task records `task`."""
        return {}

    def fields(self, setup: dict | None, num_labels: int, vocab_size: int) -> list[FieldSpec]:
        """The cache fields of the teacher's logit-level outputs (and host-side fields), before the hidden layers."""
        return [FieldSpec(self.logit_field, "example", "float32", num_labels)]

    def host_fields(self, setup: dict | None, input_ids: np.ndarray, mask: np.ndarray, example_ids: np.ndarray, extra: dict):
        """Per batch, before the forward: (the ids the teacher sees, fields computed on the host). `extra` holds the
        batch's rows of the prepared split's task columns."""
        return input_ids, {}

    def model_inputs(self, setup: dict | None, input_ids: np.ndarray, mask: np.ndarray, extra: dict) -> dict[str, np.ndarray]:
        """Per batch: inputs the teacher's forward takes besides input_ids and attention_mask (segment ids)."""
        return {}

    def cache_tables(self, splits: dict) -> dict[str, Any]:
        """Tables (pyarrow) the cache keeps beside its shards, from the prepared splits: what scoring needs that is
        not per token or per example (a QA task's question texts and reference answers)."""
        return {}

    def device_fields(self, out, tokens, setup: dict | None) -> dict[str, torch.Tensor]:
        """Per batch, after the forward: the logit-level fields on the device. `tokens(t)` selects real tokens."""
        return {self.logit_field: out.logits.float()}

    def prepared_columns(self) -> list[str]:
        """Columns of the prepared splits besides example_id, input_ids, length and label that extraction reads."""
        return []

    # ---- stage two -------------------------------------------------------------------------------------------------
    def cache_columns(self) -> list[str]:
        """The logit-level cache fields a student reads."""
        return [self.logit_field]

    def collate(self, rows: list[dict], width: int, per_token) -> dict[str, torch.Tensor]:
        """Labels and teacher targets of a padded batch; `per_token(rows, name, width, fill, dtype)` pads a token field."""
        return {
            "labels": torch.tensor([r["label"] for r in rows]),
            "teacher_logits": torch.from_numpy(np.stack([r[self.logit_field] for r in rows]).astype(np.float32)),
        }

    def student_forward(self, student, training: bool):
        """The module a student runs in its forward: the whole model unless the task computes the head itself."""
        return student

    def loss(self, student, out, labels, teacher: dict, hidden_pairs, attention_mask, mix: LossMix, cfg, training: bool):
        """The task's logit-level loss mixed with the hidden-state loss: (total, parts)."""
        return distillation_loss(out.logits, labels, teacher["teacher_logits"], hidden_pairs, attention_mask, mix)

    def returns_logits(self, training: bool) -> bool:
        return True

    def trainer_metrics(self, label_names: list[str]) -> dict[str, Any]:
        """compute_metrics (and preprocess_logits_for_metrics) for the Trainer's per-epoch dev evaluation."""
        from pipeline.scoring import accuracy_metrics

        return {"compute_metrics": accuracy_metrics}

    # ---- evaluation ------------------------------------------------------------------------------------------------
    def dev_columns(self) -> list[str]:
        """Cache fields of the dev rows that scoring a model needs (token ids and labels always come)."""
        return []

    def quality(self, model, rows: list[dict], tokens: list[np.ndarray], batch_size: int, pad_id: int, cache=None) -> dict:
        """Dev metrics of `model` on the dev rows of `cache`; must include `accuracy` and the task's headline."""
        from pipeline.scoring import classification_metrics, predict

        logits = predict(model, tokens, batch_size, pad_id)
        return classification_metrics(logits.argmax(-1), np.array([r["label"] for r in rows]), model.config.num_labels)
