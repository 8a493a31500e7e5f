"""Quantization-aware distillation: train the student through the int8 arithmetic it will be served with.

ONNX Runtime's dynamic quantization (the export stage's `model.int8.onnx`, `export.weight_type: quint8`) stores every
linear layer's weights and every embedding table as asymmetric uint8 (one scale and zero point per matrix) and
quantizes each linear layer's input per batch to asymmetric uint8; it then multiplies exactly. `fake_int8` makes the
student's forward compute those roundings — straight-through gradients, so training (and each epoch's scores) sees
the int8 model while the float weights underneath learn; on one layer it reproduces ONNX Runtime's int8 output to the
last float bit. `strip_fake_int8` restores the float forward before saving: the saved student is a plain float
checkpoint whose post-training int8 export is the model that was trained. (`qint8` weights are not emulated: on CPUs
without VNNI their u8s8 kernels saturate, which no rounding here reproduces.)
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def _round_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q forward, identity backward (the straight-through estimator)."""
    return x + (q - x).detach()


def uint8(x: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Asymmetric uint8 of a tensor over its range (0 included): what dynamic quantization does to a linear layer's
    input per batch, and to a weight matrix with `export.weight_type: quint8` (`per_row`: one scale per output row)."""
    d = x.detach()
    lo = (d.amin(dim=1, keepdim=True) if per_row else d.min()).clamp(max=0)
    hi = (d.amax(dim=1, keepdim=True) if per_row else d.max()).clamp(min=0)
    scale = (hi - lo).clamp_min(1e-12) / 255
    zero = torch.round(-lo / scale)
    return _round_through(x, (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale)


def _int8_linear(self, x: torch.Tensor) -> torch.Tensor:
    return F.linear(uint8(x), uint8(self.weight, self._int8_per_channel), self.bias)


def _int8_embedding(self, ids: torch.Tensor) -> torch.Tensor:
    w = uint8(self.weight)
    return F.embedding(ids, w, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)


def fake_int8(model: torch.nn.Module, per_channel: bool = False) -> int:
    """Compute every linear layer (weight and input) and every embedding table of `model` as the int8 export will, in place (their `forward` is replaced; weights and state dict are untouched); returns how many
    modules were wrapped."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and "forward" not in module.__dict__:
            module._int8_per_channel = per_channel
            module.forward = types.MethodType(_int8_linear, module)
            count += 1
        elif isinstance(module, torch.nn.Embedding) and "forward" not in module.__dict__:
            module.forward = types.MethodType(_int8_embedding, module)
            count += 1
    return count


def strip_fake_int8(model: torch.nn.Module) -> None:
    """Undo `fake_int8`: the modules compute in float again, with the weights that were trained."""
    for module in model.modules():
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_int8_per_channel", None)
