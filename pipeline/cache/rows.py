"""A batch of cache rows held column by column: per field, the rows' values as numpy views into the mapped shards (no
copy), padded into one tensor per field, each row's stored values converted while copied into place (no row dicts,
no intermediate arrays). The reader's `__getitems__` returns one, so the DataLoader hands the collator a whole batch; rows read one at a time
(a dict per row) become one with `Rows.from_dicts`, so the collator has one path."""

from __future__ import annotations

import warnings

import numpy as np
import torch

ROW_KEYS = ("example_id", "label", "length")  # scalars of every row


class Rows:
    """`lengths` (rows,); `columns[name]`: one array per row (a token field's is (length, ...), an example field's its
    values; a batch read at once holds an example field as one (rows, ...) array); `scales[name]`: an int8 field's
    per-token scales, one (length, 1) array per row, applied when padded."""

    def __init__(self, lengths: np.ndarray, columns: dict[str, list], scales: dict[str, list] | None = None):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.columns, self.scales = columns, scales or {}

    @classmethod
    def from_dicts(cls, rows: list[dict]) -> Rows:
        """Rows as `split[i]` gives them (int8 fields already dequantized)."""
        return cls(np.array([r["length"] for r in rows]), {k: [r[k] for r in rows] for k in rows[0]})

    @classmethod
    def join(cls, parts: list[Rows], order: list[tuple[int, int]]) -> Rows:
        """Rows of several batches in the order `order` gives as (part, row) pairs (a batch drawn from several
        splits). Every part must hold the same fields."""
        lengths = np.array([parts[p].lengths[i] for p, i in order], dtype=np.int64)
        if all(set(part.scales) == set(parts[0].scales) for part in parts):  # int8 fields stay int8 until padded
            columns = {k: [parts[p].columns[k][i] for p, i in order] for k in parts[0].columns}
            scales = {k: [parts[p].scales[k][i] for p, i in order] for k in parts[0].scales}
            return cls(lengths, columns, scales)
        values = [{k: part.values(k) for k in part.columns} for part in parts]
        return cls(lengths, {k: [values[p][k][i] for p, i in order] for k in values[0]})

    def __len__(self) -> int:
        return len(self.lengths)

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def values(self, name: str) -> list[np.ndarray]:
        """Each row's values of a field, int8 fields dequantized (for fields the batched paths below do not cover)."""
        if name not in self.scales:
            return self.columns[name]
        return [v.astype(np.float32) * s.astype(np.float32) for v, s in zip(self.columns[name], self.scales[name])]

    def stacked(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A per-example field (or `label`, `example_id`) as a (rows, ...) tensor."""
        values = self.columns[name]  # read at once: one array already; row dicts: one value per row
        return torch.from_numpy(values if isinstance(values, np.ndarray) else np.stack(values)).to(dtype)

    def padded(self, name: str, width: int, fill, dtype: torch.dtype | None) -> torch.Tensor:
        """A per-token field as (rows, width, ...) with `fill` past each row's length: the rows' stored values joined
        in one copy, then converted while scattered into place under the length mask (int8 values scaled on the way).

        `dtype=None` keeps a float field's stored precision (fp16 and bf16 stay 2 bytes a value: half the host copy
        and the transfer to the device, converted exactly to fp32 where a loss reads them); int8 fields become fp32."""
        views, scales = self.columns[name], self.scales.get(name)
        with warnings.catch_warnings():  # the views are read-only mappings; they are only read
            warnings.simplefilter("ignore", UserWarning)
            values = _tensor(np.concatenate(views), dtype is None or dtype.is_floating_point)
            if dtype is None:
                dtype = torch.float32 if scales is not None else values.dtype
            if scales is not None:
                values = values.to(dtype) * _tensor(np.concatenate(scales), True).to(dtype)
        out = torch.full((len(self), width, *values.shape[1:]), fill, dtype=dtype)
        mask = torch.arange(width)[None, :] < torch.from_numpy(self.lengths)[:, None]
        out[mask] = values.to(dtype)
        return out


def _tensor(values, floating: bool) -> torch.Tensor:
    """Stored values as a tensor without a copy. uint16 read as floats is bf16 bits (how the cache stores bfloat16);
    read as integers, indices."""
    values = np.asarray(values)
    if values.dtype == np.uint16:
        return (
            torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
            if floating
            else torch.from_numpy(values.astype(np.int32))
        )
    return torch.from_numpy(values)
