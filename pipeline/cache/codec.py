"""The stored dtypes' one encoder and one decoder: float tensors -> stored fields (extract), stored fields -> float32
(students). float16 is stored as is, bfloat16 as its raw bits in uint16 (bit-exact), int8 with a per-token absmax
scale in a `<name>_scale` field (see `token_fields`)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.cache.schema import SCALE_SUFFIX


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: q = round(x / s), s = max|x| / 127 stored as fp16 (q is computed with the stored s)."""
    scale = (t.float().abs().amax(dim=-1, keepdim=True) / 127).clamp_min(1e-8).half().float()
    return torch.round(t.float() / scale).clamp_(-127, 127).to(torch.int8), scale.half()


def encode(t: torch.Tensor, dtype: str, name: str) -> dict[str, torch.Tensor]:
    """A (tokens, width) float tensor -> the tensors of its stored field(s), on t's device."""
    if dtype == "bfloat16":
        return {name: t.to(torch.bfloat16).view(torch.int16)}
    if dtype == "int8":
        q, scale = quantize_int8(t)
        return {name: q, name + SCALE_SUFFIX: scale}
    return {name: t.to(torch.float16)}


def host_array(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor of stored values as the numpy array the writer takes (bf16 bits as uint16), without a copy."""
    return t.numpy().view(np.uint16) if t.dtype == torch.int16 else t.numpy()


def dequantize_int8(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 values (tokens, width) and their per-token fp16 scales (tokens, 1) -> float32."""
    return values.astype(np.float32) * scales.astype(np.float32)


def decode(x: np.ndarray) -> torch.Tensor:
    """Stored values as the reader returns them (fp16, bf16 bits as uint16, or already-dequantized float32) -> float32."""
    if x.dtype == np.uint16:  # bf16 bits
        return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16).float()
    return torch.from_numpy(np.array(x, dtype=np.float32))
