"""Training on transformers' Trainer, for both the teacher (fine-tuning) and the students (distillation).

One loop: the teacher trains a plain sequence classifier; a student trains a `DistillationModule` whose forward
returns the distillation loss, so the Trainer loop is untouched and only the loss is ours.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, Trainer, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from pipeline.cache import CacheSplit, attention_field, hidden_field, value_field
from pipeline.errors import PipelineError
from pipeline.losses import (attention_kl_loss, attention_mse_loss, distillation_loss, masked_lm_distillation_loss,
                             value_relation_loss)
from pipeline.metrics import classification_metrics
from pipeline.mlm import IGNORE, MASKED_LM, MLM_TARGET, TOPK_INDICES, TOPK_VALUES, masked_token_metrics
from pipeline.models import uniform_layer_map

log = logging.getLogger(__name__)


def optimizer_choice(name: str, learning_rate: float, momentum: float = 0.9) -> tuple[type, dict] | None:
    """Trainer's `optimizer_cls_and_kwargs` for `name`; None keeps the Trainer's AdamW (decoupled weight decay).
    The Trainer still builds the parameter groups (no decay on biases and norms), so Adam's decay is plain L2."""
    if name == "adam":
        return torch.optim.Adam, {"lr": learning_rate}
    if name == "sgd":
        return torch.optim.SGD, {"lr": learning_rate, "momentum": momentum}
    return None


def step_schedule(warmup_steps: int, total_steps: int, stages: int, gamma: float):
    """Linear warm-up, then the rate multiplied by `gamma` at the start of each of `stages` equal stages after the first."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return gamma ** min(stages - 1, stages * step // max(1, total_steps))
    return factor


class LengthGroupedTrainer(Trainer):
    """A Trainer whose training batches group examples of similar length (padding is per batch), given the lengths.

    `staged` = (stages, gamma) replaces the scheduler with `step_schedule`.
    """

    def __init__(self, *args, lengths: np.ndarray, staged: tuple[int, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lengths = [int(n) for n in lengths]
        self.staged = staged

    def _get_train_sampler(self, train_dataset=None):
        generator = torch.Generator().manual_seed(self.args.seed)
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    lengths=self.lengths, generator=generator)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.staged is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        schedule = step_schedule(self.args.get_warmup_steps(num_training_steps), num_training_steps, *self.staged)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, schedule)
        return self.lr_scheduler


def training_arguments(output_dir: Path | str, *, epochs: float, batch_size: int, learning_rate: float, warmup_ratio: float,
                       weight_decay: float, seed: int, logging_steps: int = 10, num_workers: int = 0,
                       eval_each_epoch: bool = True, scheduler: str = "linear", max_grad_norm: float = 1.0) -> TrainingArguments:
    """Warm-up then linear (or cosine) decay, clipping at `max_grad_norm`; nothing saved by the Trainer (stages save
    with save_pretrained). A 'step' scheduler is set up by `LengthGroupedTrainer(staged=...)`."""
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 64), learning_rate=learning_rate, warmup_steps=warmup_ratio,
        weight_decay=weight_decay, lr_scheduler_type="cosine" if scheduler == "cosine" else "linear", optim="adamw_torch",
        max_grad_norm=max_grad_norm, seed=seed, data_seed=seed,
        logging_steps=logging_steps, save_strategy="no", eval_strategy="epoch" if eval_each_epoch else "no",
        report_to="none", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=num_workers,
        dataloader_pin_memory=torch.cuda.is_available(), label_names=["labels"], disable_tqdm=False,
        remove_unused_columns=False,
    )


def _accuracy_metrics(eval_pred) -> dict:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    labels = eval_pred.label_ids
    return classification_metrics(np.asarray(logits).argmax(-1), np.asarray(labels), int(np.asarray(logits).shape[-1]))


def _argmax_logits(logits, labels):
    """Per-token vocabulary logits -> top-1 ids before the Trainer gathers them (full logits would be tokens x vocab)."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _masked_token_metrics(eval_pred) -> dict:
    predictions = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return masked_token_metrics(np.asarray(predictions), np.asarray(eval_pred.label_ids))


class _TokenDataset(torch.utils.data.Dataset):
    """Prepared rows (input_ids, label) for the teacher."""

    def __init__(self, ds):
        self.ids, self.labels = ds["input_ids"], ds["label"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def fine_tune_teacher(model, tokenizer, train_ds, dev_ds, args: TrainingArguments) -> list[dict]:
    """Fine-tune a sequence classifier in place; returns the Trainer's log history (loss, dev accuracy per epoch)."""
    trainer = LengthGroupedTrainer(model=model, args=args, train_dataset=_TokenDataset(train_ds), eval_dataset=_TokenDataset(dev_ds),
                                   data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=_accuracy_metrics,
                                   lengths=np.asarray(train_ds["length"]))
    trainer.train()
    return trainer.state.log_history


class _TextDataset(_TokenDataset):
    """Prepared rows as token ids only, for masked-LM fine-tuning (the collator masks them and makes the labels)."""

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}


def fine_tune_masked_lm(model, tokenizer, train_ds, dev_ds, args: TrainingArguments, mlm_probability: float,
                        seed: int) -> list[dict]:
    """Fine-tune a masked-LM model in place on the corpus texts (BERT masking, drawn anew each epoch from `seed`);
    returns the log history (loss; dev masked-LM loss per epoch)."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    trainer = LengthGroupedTrainer(model=model, args=args, train_dataset=_TextDataset(train_ds), eval_dataset=_TextDataset(dev_ds),
                                   data_collator=collator, lengths=np.asarray(train_ds["length"]))
    trainer.train()
    return trainer.state.log_history


def _to_float(x: np.ndarray) -> torch.Tensor:
    if x.dtype == np.uint16:  # bf16 bits
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16).float()
    return torch.from_numpy(np.array(x, dtype=np.float32))


class ConcatSplits(torch.utils.data.ConcatDataset):
    """Several cache splits read as one training set (labeled train + unlabeled transfer rows); lengths() feeds the
    length-grouped sampler."""

    def lengths(self) -> np.ndarray:
        return np.concatenate([d.lengths() for d in self.datasets])


class CacheCollator:
    """Cache rows -> a padded batch: token ids, mask, labels, teacher logits, hidden states and values (B, T, H), and
    attention maps (B, heads, T, T), zero where padded. From a masked-LM cache, labels are the masking targets (B, T)
    (IGNORE where not masked or padded) and the teacher's top-k values and indices are (B, T, k)."""

    def __init__(self, layers: list[int], pad_token_id: int = 0, attentions: list[int] = (), values: list[int] = (),
                 task: str = "sequence_classification"):
        self.layers, self.pad_token_id = layers, pad_token_id
        self.attentions, self.values = list(attentions), list(values)
        self.task = task

    def _per_token(self, rows: list[dict], name: str, width: int, fill, dtype: torch.dtype) -> torch.Tensor:
        out = torch.full((len(rows), width, rows[0][name].shape[-1]), fill, dtype=dtype)
        for i, r in enumerate(rows):
            out[i, :r["length"]] = torch.from_numpy(np.asarray(r[name]).astype(np.int64 if not dtype.is_floating_point else np.float32))
        return out

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(r["length"] for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :r["length"]] = torch.from_numpy(r["input_ids"].astype(np.int64))
            mask[i, :r["length"]] = 1
        if self.task == MASKED_LM:
            batch = {"input_ids": ids, "attention_mask": mask,
                     "labels": self._per_token(rows, MLM_TARGET, width, IGNORE, torch.long)[..., 0],
                     "teacher_topk_values": self._per_token(rows, TOPK_VALUES, width, 0.0, torch.float32),
                     "teacher_topk_indices": self._per_token(rows, TOPK_INDICES, width, 0, torch.long)}
        else:
            batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["label"] for r in rows]),
                     "teacher_logits": torch.from_numpy(np.stack([r["logits"] for r in rows]).astype(np.float32))}
        for name in [hidden_field(layer) for layer in self.layers] + [value_field(layer) for layer in self.values]:
            hid = torch.zeros((len(rows), width, rows[0][name].shape[-1]), dtype=torch.float32)
            for i, r in enumerate(rows):
                hid[i, :r["length"]] = _to_float(r[name])
            batch[f"teacher_{name}"] = hid
        for name in [attention_field(layer) for layer in self.attentions]:
            att = torch.zeros((len(rows), rows[0][name].shape[0], width, width), dtype=torch.float32)
            for i, r in enumerate(rows):
                att[i, :, :r["length"], :r["length"]] = _to_float(r[name])
            batch[f"teacher_{name}"] = att
        return batch


def hidden_layer_pairs(student_layers: int, teacher_layers: int, cached: list[int], layer_map: str = "uniform",
                       explicit: list[list[int]] | None = None) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs for the hidden-state loss (layer 0 = embedding output), or, without
    `explicit`, for the attention loss over cached attention layers.

    Explicit pairs are taken as given (a teacher layer missing from the cache is then an error, raised by the cache
    check). `uniform` pairs student m with teacher floor(m N / M), `last` pairs only the last layers; both keep just the
    pairs whose teacher layer is in the cache.
    """
    if explicit:
        for m, t in explicit:
            if m > student_layers or t > teacher_layers:
                raise PipelineError(f"params.yaml: layer pair [{m}, {t}] is out of range: the student has layers 0..{student_layers}, "
                                    f"the teacher 0..{teacher_layers}")
        return [(int(m), int(t)) for m, t in explicit]
    if layer_map == "last":
        return [(student_layers, teacher_layers)] if teacher_layers in cached else []
    return [(m, t) for m, t in enumerate(uniform_layer_map(student_layers, teacher_layers), start=1) if t in cached]


class DistillationModule(nn.Module):
    """Student + learned projections; forward returns the distillation loss computed from cached teacher outputs.

    Optional MiniLM/TinyBERT terms: `attention_weight` x attention loss over `attention_pairs`, and `value_weight` x
    value-relation KL between the student's layer and the teacher's layer of `value_pair`, with `relation_heads` heads.
    """

    def __init__(self, student: nn.Module, pairs: list[tuple[int, int]], teacher_hidden: int, *, alpha: float, beta: float,
                 gamma: float, temperature: float, logit_loss: str = "kl", hidden_loss: str = "mse",
                 temperature_end: float | None = None, attention_pairs: list[tuple[int, int]] = (),
                 attention_weight: float = 0.0, attention_loss: str = "kl", value_pair: tuple[int, int] | None = None,
                 value_weight: float = 0.0, relation_heads: int = 1, task: str = "sequence_classification",
                 mlm_positions: str = "masked"):
        super().__init__()
        self.task, self.mlm_positions = task, mlm_positions
        self.attention_pairs = list(attention_pairs) if attention_weight else []
        self.attention_weight, self.attention_loss = attention_weight, attention_loss
        self.value_pair = value_pair if value_weight else None
        self.value_weight, self.relation_heads = value_weight, relation_heads
        self._student_values = None
        if self.value_pair is not None:
            projection = student.base_model.encoder.layer[self.value_pair[0] - 1].attention.self.value
            projection.register_forward_hook(lambda module, args, output: setattr(self, "_student_values", output))
        self.student, self.pairs = student, pairs
        self.alpha, self.beta, self.gamma, self.temperature = alpha, beta, gamma, temperature
        self.logit_loss, self.hidden_loss = logit_loss, hidden_loss
        self.temperature_start, self.temperature_end = temperature, temperature_end
        s_hidden = student.config.hidden_size
        # A learned linear map when widths differ (TinyBERT); identity otherwise, so equal widths add no parameters.
        self.projections = nn.ModuleDict({str(m): nn.Linear(s_hidden, teacher_hidden) if s_hidden != teacher_hidden else nn.Identity()
                                          for m, _ in pairs})
        self.running: dict[str, list[float]] = {}

    def forward(self, input_ids, attention_mask, labels, teacher_logits=None, **teacher_hidden):
        need_hidden = bool(self.gamma and self.pairs)
        mlm_training = self.task == MASKED_LM and self.training
        # a masked-LM student in training runs its vocabulary head only where a loss reads it (see _mlm_losses)
        model = self.student.base_model if mlm_training else self.student
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_hidden,
                    output_attentions=bool(self.attention_pairs))
        hidden_pairs = []
        if need_hidden:
            hidden_pairs = [(self.projections[str(m)](out.hidden_states[m]), teacher_hidden[f"teacher_{hidden_field(t)}"])
                            for m, t in self.pairs]
        if self.task == MASKED_LM:
            loss, parts = self._mlm_losses(out, labels, attention_mask, hidden_pairs, teacher_hidden, mlm_training)
        else:
            loss, parts = distillation_loss(out.logits, labels, teacher_logits, hidden_pairs, attention_mask, alpha=self.alpha,
                                            beta=self.beta, gamma=self.gamma, temperature=self.temperature,
                                            logit_kind=self.logit_loss, hidden_kind=self.hidden_loss)
        if self.attention_pairs:
            att_loss = attention_kl_loss if self.attention_loss == "kl" else attention_mse_loss
            parts["attention"] = torch.stack([att_loss(out.attentions[m - 1], teacher_hidden[f"teacher_{attention_field(t)}"],
                                                       attention_mask) for m, t in self.attention_pairs]).mean()
            loss = loss + self.attention_weight * parts["attention"]
        if self.value_pair is not None:
            parts["value"] = value_relation_loss(self._student_values, teacher_hidden[f"teacher_{value_field(self.value_pair[1])}"],
                                                 attention_mask, self.relation_heads)
            loss = loss + self.value_weight * parts["value"]
        if self.training:
            for k, v in parts.items():
                self.running.setdefault(k, []).append(float(v.detach()))
        return {"loss": loss} if mlm_training else {"loss": loss, "logits": out.logits}

    def _mlm_losses(self, out, labels, attention_mask, hidden_pairs, teacher, head_on_selected: bool):
        """Masked-LM losses at the tokens they read: the masked ones (CE; and the top-k KL with mlm_positions
        'masked') or every real token (KL with 'all'). With `head_on_selected` the vocabulary head runs on those
        tokens only — at 15% masking that skips most of the (tokens x vocabulary) projection, the bulk of a small
        student's step; otherwise (evaluation) the full logits are there and are indexed."""
        masked = labels != IGNORE
        kl_where = masked if self.mlm_positions == "masked" else attention_mask.bool()
        need = masked | kl_where
        logits = self.student.cls(out.last_hidden_state[need]) if head_on_selected else out.logits[need]
        return masked_lm_distillation_loss(
            logits, labels[need], teacher["teacher_topk_values"][need], teacher["teacher_topk_indices"][need], kl_where[need],
            hidden_pairs, attention_mask, alpha=self.alpha, beta=self.beta, gamma=self.gamma, temperature=self.temperature,
            hidden_kind=self.hidden_loss)


class OnlineDistillationModule(DistillationModule):
    """Online KD, the baseline the cache is measured against: the same module, loss and Trainer, with the teacher run
    inside every training step instead of its outputs read from the cache."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: list[tuple[int, int]], **loss_weights):
        super().__init__(student, pairs, teacher.config.hidden_size, **loss_weights)
        self.teacher = teacher.eval().requires_grad_(False)  # frozen: the Trainer's optimizer skips it

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # no dropout in the teacher, as in extraction
        return self

    def forward(self, input_ids, attention_mask, labels, **_):
        if self.attention_pairs or self.value_pair is not None:
            raise PipelineError("the online-KD baseline covers the logit and hidden-state losses; set attention_weight and "
                                "value_weight to 0")
        with torch.no_grad():
            out = self.teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=bool(self.gamma and self.pairs))
        hidden = {f"teacher_{hidden_field(t)}": out.hidden_states[t] for _, t in self.pairs} if self.gamma and self.pairs else {}
        return super().forward(input_ids, attention_mask, labels, out.logits, **hidden)


class DistillTrainer(LengthGroupedTrainer):
    """Sets the scheduled temperature each step; logs the mean of each loss part since the last log beside the total."""

    def training_step(self, model, inputs, *args, **kwargs):
        module = self.model
        if module.temperature_end is not None and self.state.max_steps:
            progress = self.state.global_step / self.state.max_steps
            module.temperature = module.temperature_start + (module.temperature_end - module.temperature_start) * progress
        return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            for k, values in self.model.running.items():
                logs[f"loss_{k}"] = float(np.mean(values))
            self.model.running.clear()
            logs["temperature"] = self.model.temperature
        super().log(logs, *args, **kwargs)


def train_student(module: DistillationModule, train: CacheSplit, dev: CacheSplit, args: TrainingArguments,
                  layers: list[int], pad_token_id: int, optimizer: tuple[type, dict] | None = None,
                  staged: tuple[int, float] | None = None) -> list[dict]:
    """Distil into `module.student` from the cache splits; returns the Trainer's log history."""
    collator = CacheCollator(layers, pad_token_id, [t for _, t in module.attention_pairs],
                             [module.value_pair[1]] if module.value_pair else [], task=module.task)
    mlm = module.task == MASKED_LM
    trainer = DistillTrainer(model=module, args=args, train_dataset=train, eval_dataset=dev,
                             data_collator=collator, compute_metrics=_masked_token_metrics if mlm else _accuracy_metrics,
                             preprocess_logits_for_metrics=_argmax_logits if mlm else None,
                             lengths=train.lengths(), optimizer_cls_and_kwargs=optimizer, staged=staged)
    trainer.train()
    return trainer.state.log_history


def train_student_online(module: OnlineDistillationModule, train_ds, tokenizer, args: TrainingArguments) -> list[dict]:
    """Online-KD twin of `train_student`: prepared rows (token ids, labels) in, teacher called each step."""
    trainer = DistillTrainer(model=module, args=args, train_dataset=_TokenDataset(train_ds),
                             data_collator=DataCollatorWithPadding(tokenizer), lengths=np.asarray(train_ds["length"]))
    trainer.train()
    return trainer.state.log_history


def write_history_csv(history: list[dict], path: Path) -> None:
    """Trainer log history -> one CSV row per log step (DVC plots read it)."""
    rows = [h for h in history if "loss" in h or "eval_accuracy" in h]
    keys = ["step", "epoch"] + sorted({k for h in rows for k in h} - {"step", "epoch"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows(rows)


def scratch_dir() -> str:
    """Trainer needs an output_dir; stages save through save_pretrained, so it is scratch."""
    return tempfile.mkdtemp(prefix="kd-trainer-")
