"""Compact attention and value relations (`extract.relations: inputs`): instead of each cached layer's attention maps
(heads x len x len per example) and value vectors, the cache keeps the hidden state that enters the layer (hidden
state L-1 for transformer layer L, stored like any cached hidden layer: in the cache's dtype, on a low-rank basis when
`extract.rank` is set) and the layer's query, key and value projections, once, as the cache table `relations`
(covered by the manifest's digests like a shard). Stage two recomputes what MiniLM's losses compare:

    attention = softmax(Q K^T / sqrt(d_head) over real keys),  Q = h W_q^T + b_q,  K = h W_k^T + b_k (per head)
    values    = h W_v^T + b_v

exactly the teacher's computation (BERT's self-attention in eval mode: no dropout), from the stored input. A map costs
a token `heads x len` values; its input costs `rank` (or `hidden`) values whatever the length, and one input serves a
layer's attention and values both.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch

from pipeline.errors import PipelineError

RELATIONS_TABLE = "relations"
PROJECTIONS = ("query", "key", "value")


def self_attention(model, layer: int, key: str):
    """The self-attention module of transformer layer `layer` (1-based) of a BERT-like model; `key` names the param
    that asked for it."""
    try:
        return model.base_model.encoder.layer[layer - 1].attention.self
    except AttributeError:
        raise PipelineError(
            f"{key}: the teacher ({type(model).__name__}) has no BERT-style encoder.layer[i].attention.self; cache "
            "attentions and values only for BERT-like teachers"
        ) from None


def relations_table(model, layers: list[int]) -> pa.Table:
    """The query/key/value projections (weights row-major, biases) of each of `layers`, one row per layer."""
    rows = {"layer": [], "width": [], "heads": []}
    for name in PROJECTIONS:
        rows[f"{name}_weight"], rows[f"{name}_bias"] = [], []
    for layer in layers:
        attn = self_attention(model, layer, "extract.relations")
        rows["layer"].append(layer)
        rows["width"].append(attn.query.in_features)
        rows["heads"].append(model.config.num_attention_heads)
        for name in PROJECTIONS:
            linear = getattr(attn, name)
            rows[f"{name}_weight"].append(linear.weight.detach().float().cpu().numpy().reshape(-1))
            rows[f"{name}_bias"].append(linear.bias.detach().float().cpu().numpy())
    columns = {k: pa.array(v, pa.int32()) for k, v in rows.items() if k in ("layer", "width", "heads")}
    columns.update({k: pa.array(v, pa.large_list(pa.float32())) for k, v in rows.items() if k not in columns})
    return pa.table(columns)


def projections_from_table(table: pa.Table) -> dict[int, dict[str, np.ndarray]]:
    """The cache's `relations` table -> layer -> {query_weight (out, in), query_bias, ..., heads}, float32."""
    out = {}
    for row in table.to_pylist():
        width = row["width"]
        layer = {"heads": np.int64(row["heads"])}
        for name in PROJECTIONS:
            weight = np.asarray(row[f"{name}_weight"], dtype=np.float32)
            layer[f"{name}_weight"] = weight.reshape(-1, width)
            layer[f"{name}_bias"] = np.asarray(row[f"{name}_bias"], dtype=np.float32)
        out[int(row["layer"])] = layer
    return out


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, h = x.shape
    return x.view(b, t, heads, h // heads).transpose(1, 2)


def attention_from_input(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    query: tuple[torch.Tensor, torch.Tensor],
    key: tuple[torch.Tensor, torch.Tensor],
    heads: int,
) -> torch.Tensor:
    """(B, T, H) layer input + (B, T) mask -> (B, heads, T, T) attention probabilities over real keys, float32;
    `query` and `key` are (weight, bias)."""
    h = hidden.float()
    q = _heads(torch.nn.functional.linear(h, *query), heads)
    k = _heads(torch.nn.functional.linear(h, *key), heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


def values_from_input(hidden: torch.Tensor, value: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(B, T, H) layer input -> (B, T, H) value vectors, float32; `value` is (weight, bias)."""
    return torch.nn.functional.linear(hidden.float(), *value)
