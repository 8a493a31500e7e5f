"""The students' loss as a module the training loop trains: `DistillationModule` wraps a student and returns the
distillation loss from cached teacher outputs (pipeline.student_loop trains it).
`OnlineDistillationModule` is the baseline the cache is measured against: the same loss with the teacher run in
every step."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import DataCollatorWithPadding

from pipeline.cache import CacheSplit, attention_field, hidden_field, value_field
from pipeline.cache.basis import reconstruct
from pipeline.cache.relations import PROJECTIONS, attention_from_input, values_from_input
from pipeline.checkpoints import Checkpoints
from pipeline.collate import CacheCollator, keep_freed_host_memory
from pipeline.config import DistillConfig
from pipeline.errors import PipelineError
from pipeline.layers import LayerPlan, relation_input
from pipeline.losses import LossMix, attention_kl_loss, attention_mse_loss, combine_teachers, value_relation_loss
from pipeline.student_loop import StudentLoop
from pipeline.tasks.sequence_classification.student import SequenceClassificationStudent
from pipeline.tasks.student import task_student
from pipeline.torch_datasets import TokenDataset


class DistillationModule(nn.Module):
    """Student + learned projections; forward returns the distillation loss computed from cached teacher outputs,
    weighted as `cfg` (the student's merged distill settings) says, over the layers `plan` pairs.

    Optional MiniLM/TinyBERT terms: attention_weight x attention loss over the plan's attention pairs, and
    value_weight x value-relation KL between the student's and the teacher's layers of its value pair.
    """

    def __init__(
        self,
        student: nn.Module,
        cfg: DistillConfig,
        plan: LayerPlan,
        task: str | SequenceClassificationStudent = "sequence_classification",
    ):
        super().__init__()
        self.cfg, self.task = cfg, task_student(task) if isinstance(task, str) else task
        self.attention_pairs = list(plan.attention_pairs) if cfg.attention_weight else []
        self.value_pair = plan.value_pair if cfg.value_weight else None
        self.relation_heads = plan.relation_heads
        self._student_values = None
        if self.value_pair is not None:
            projection = student.base_model.encoder.layer[self.value_pair[0] - 1].attention.self.value
            projection.register_forward_hook(lambda module, args, output: setattr(self, "_student_values", output))
        self.student, self.pairs = student, plan.pairs
        self.temperature = cfg.temperature  # scheduled by StudentLoop when cfg.temperature_end is set
        s_hidden = student.config.hidden_size
        # A learned linear map when widths differ (TinyBERT); identity otherwise, so equal widths add no parameters.
        self.projections = nn.ModuleDict(
            {
                str(m): nn.Linear(s_hidden, plan.teacher_hidden) if s_hidden != plan.teacher_hidden else nn.Identity()
                for m, _ in self.pairs
            }
        )
        # a low-rank cache's bases and a relations-'inputs' cache's projections (non-persistent: never saved with the
        # student), moved to the device with it
        self.plan, self.rebuild = plan, set(plan.bases)
        for t, (mean, components) in plan.bases.items():
            self.register_buffer(f"basis_mean_{t}", torch.as_tensor(mean), persistent=False)
            self.register_buffer(f"basis_components_{t}", torch.as_tensor(components), persistent=False)
        for t, arrays in plan.projections.items():
            for name in PROJECTIONS:
                for part in ("weight", "bias"):
                    self.register_buffer(
                        f"teacher_{name}_{part}_{t}", torch.as_tensor(arrays[f"{name}_{part}"]), persistent=False
                    )
        # loss parts summed on the device since the last log, with their count: reading a value back per step would
        # make the host wait for the GPU at every step
        self.running: dict[str, list] = {}

    def teacher_hidden(self, layer: int, teacher: dict) -> torch.Tensor:
        """The cached teacher layer as the loss compares it: at full width (a low-rank cache's coefficients are
        rebuilt here, on the device, from its basis)."""
        stored = teacher[f"teacher_{hidden_field(layer)}"]
        if layer not in self.rebuild:
            return stored
        return reconstruct(stored, getattr(self, f"basis_mean_{layer}"), getattr(self, f"basis_components_{layer}"))

    def _projection(self, name: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"teacher_{name}_weight_{layer}"), getattr(self, f"teacher_{name}_bias_{layer}")

    def teacher_attention(self, layer: int, teacher: dict, attention_mask: torch.Tensor) -> torch.Tensor:
        """The teacher's attention maps of `layer`: cached, or recomputed from the layer's cached input."""
        if not self.plan.projections:
            return teacher[f"teacher_{attention_field(layer)}"]
        heads = int(self.plan.projections[layer]["heads"])
        hidden = self.teacher_hidden(relation_input(layer), teacher)
        return attention_from_input(
            hidden, attention_mask, self._projection("query", layer), self._projection("key", layer), heads
        )

    def teacher_values(self, layer: int, teacher: dict) -> torch.Tensor:
        """The teacher's value vectors of `layer`: cached, or recomputed from the layer's cached input."""
        if not self.plan.projections:
            return teacher[f"teacher_{value_field(layer)}"]
        return values_from_input(self.teacher_hidden(relation_input(layer), teacher), self._projection("value", layer))

    def loss_mix(self) -> LossMix:
        cfg = self.cfg
        return LossMix(cfg.alpha, cfg.beta, cfg.gamma, self.temperature, cfg.logit_loss, cfg.hidden_loss)

    def forward(
        self,
        input_ids,
        attention_mask,
        labels,
        teacher_logits=None,
        token_type_ids=None,
        teacher_extra_logits=None,
        **teacher_hidden,
    ):
        cfg = self.cfg
        if teacher_extra_logits is not None:  # several teachers: one soft target, their probabilities averaged at T
            stacked = torch.cat([teacher_logits.unsqueeze(1).float(), teacher_extra_logits.float()], dim=1)
            teacher_logits = combine_teachers(stacked, cfg.teacher_weights, self.temperature, cfg.logit_loss)
        need_hidden = bool(cfg.gamma and self.pairs)
        out = self.task.forward_module(self.student, self.training)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **({"token_type_ids": token_type_ids} if token_type_ids is not None else {}),
            output_hidden_states=need_hidden,
            output_attentions=bool(self.attention_pairs),
        )
        hidden_pairs = []
        if need_hidden:
            hidden_pairs = [
                (self.projections[str(m)](out.hidden_states[m]), self.teacher_hidden(t, teacher_hidden)) for m, t in self.pairs
            ]
        teacher = dict(teacher_hidden, teacher_logits=teacher_logits)
        loss, parts = self.task.loss(
            self.student, out, labels, teacher, hidden_pairs, attention_mask, self.loss_mix(), self.training
        )
        if self.attention_pairs:
            att_loss = attention_kl_loss if cfg.attention_loss == "kl" else attention_mse_loss
            parts["attention"] = torch.stack(
                [
                    att_loss(out.attentions[m - 1], self.teacher_attention(t, teacher_hidden, attention_mask), attention_mask)
                    for m, t in self.attention_pairs
                ]
            ).mean()
            loss = loss + cfg.attention_weight * parts["attention"]
        if self.value_pair is not None:
            parts["value"] = value_relation_loss(
                self._student_values,
                self.teacher_values(self.value_pair[1], teacher_hidden),
                attention_mask,
                self.relation_heads,
            )
            loss = loss + cfg.value_weight * parts["value"]
        if self.training:
            for k, v in parts.items():
                total = self.running.setdefault(k, [0.0, 0])
                total[0], total[1] = total[0] + v.detach(), total[1] + 1
        return {"loss": loss, "logits": out.logits} if self.task.returns_logits(self.training) else {"loss": loss}


class OnlineDistillationModule(DistillationModule):
    """Online KD, the baseline the cache is measured against: the same module, loss and loop, with the teacher run
    inside every training step instead of its outputs read from the cache."""

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: DistillConfig, pairs: list[tuple[int, int]]):
        super().__init__(student, cfg, LayerPlan(pairs, teacher.config.hidden_size))
        self.teacher = teacher.eval().requires_grad_(False)  # frozen: the optimizer skips it

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # no dropout in the teacher, as in extraction
        return self

    def forward(self, input_ids, attention_mask, labels, **_):
        if self.attention_pairs or self.value_pair is not None:
            raise PipelineError(
                "the online-KD baseline covers the logit and hidden-state losses; set attention_weight and value_weight to 0"
            )
        need_hidden = bool(self.cfg.gamma and self.pairs)
        with torch.no_grad():
            out = self.teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_hidden)
        hidden = {f"teacher_{hidden_field(t)}": out.hidden_states[t] for _, t in self.pairs} if need_hidden else {}
        return super().forward(input_ids, attention_mask, labels, out.logits, **hidden)


def train_student(
    module: DistillationModule,
    train: CacheSplit,
    dev: CacheSplit | None,
    cfg: DistillConfig,
    pad_token_id: int,
    seed: int = 0,
    checkpoints: Checkpoints | None = None,
    callbacks=(),
) -> list[dict]:
    """Distil into `module.student` from the cache splits (`StudentLoop`; `dev` None: no per-epoch evaluation),
    resuming from `checkpoints` when an interrupted run left one; returns the log history."""
    keep_freed_host_memory()
    collator = CacheCollator(module.plan.hidden_layers, pad_token_id, *module.plan.stored_relations, task=module.task)
    label_names = [module.student.config.id2label[i] for i in range(module.student.config.num_labels)]
    loop = StudentLoop(
        module,
        train,
        collator,
        train.lengths(),
        cfg,
        seed,
        dev=dev,
        metrics=module.task.trainer_metrics(label_names),
        checkpoints=checkpoints,
        callbacks=callbacks,
    )
    return loop.fit()


def train_student_online(module: OnlineDistillationModule, train_ds, tokenizer, cfg: DistillConfig, seed: int = 0) -> list[dict]:
    """Online-KD twin of `train_student`: prepared rows (token ids, labels) in, teacher called each step, same loop."""
    loop = StudentLoop(
        module, TokenDataset(train_ds), DataCollatorWithPadding(tokenizer), np.asarray(train_ds["length"]), cfg, seed
    )
    return loop.fit()
