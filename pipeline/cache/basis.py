"""Low-rank hidden states (`extract.rank`): a per-layer basis fitted on the teacher's own outputs, coefficients cached.

Before the first shard is written, the teacher runs over a seeded sample of rows and, per cached layer, the principal
directions of its real-token hidden states are fitted (mean-centred, float64 covariance, `eigh`; each direction's sign
fixed so that its largest entry is positive, so the basis is deterministic for a seed and a teacher). The cache stores
per token the `rank` coefficients `c = (h - mean) @ components` in the cache's dtype, and the basis itself as the
cache table `basis` (covered by the manifest's digests like a shard). Stage two rebuilds `h ~ mean + c @ components.T`
on its device and computes the hidden-state loss against that, at full width: the student's projection keeps its
meaning (it maps into the teacher's space), and what the student puts outside the teacher's subspace is still
penalised, which a loss in the basis would not see.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

BASIS_TABLE = "basis"


class BasisFit:
    """Running sums of one layer's real-token hidden states (float64, on their device) -> its top-`rank` basis."""

    def __init__(self, width: int, device: torch.device):
        self.count = 0
        self.total = torch.zeros(width, dtype=torch.float64, device=device)
        self.gram = torch.zeros(width, width, dtype=torch.float64, device=device)

    def add(self, tokens: torch.Tensor) -> None:
        x = tokens.detach().to(torch.float64)
        self.count += x.shape[0]
        self.total += x.sum(0)
        self.gram += x.T @ x

    def basis(self, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(mean (width,), components (width, rank), share of the variance the components explain), float32."""
        if self.count < 2:
            raise ValueError("a basis needs at least 2 sample tokens")
        mean = self.total / self.count
        cov = (self.gram - self.count * torch.outer(mean, mean)) / (self.count - 1)
        values, vectors = torch.linalg.eigh(cov.cpu())  # ascending
        values, vectors = values.flip(0), vectors.flip(1)
        top = vectors[:, :rank]
        signs = torch.sign(top.gather(0, top.abs().argmax(0, keepdim=True)))
        top = top * torch.where(signs == 0, torch.ones_like(signs), signs)
        explained = float(values[:rank].clamp_min(0).sum() / values.clamp_min(0).sum().clamp_min(1e-30))
        return mean.cpu().float().numpy(), top.float().numpy(), explained


def project(hidden: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """(tokens, width) hidden states -> (tokens, rank) float32 coefficients in the basis."""
    return (hidden.float() - mean) @ components


def reconstruct(coefficients: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """(..., rank) coefficients -> (..., width) float32 hidden states: mean + coefficients @ components.T."""
    return coefficients.float() @ components.T + mean


def basis_table(bases: dict[int, tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    """The bases of the cached layers as the cache's `basis` table: one row per layer, components row-major."""
    layers = sorted(bases)
    return pa.table(
        {
            "layer": pa.array(layers, pa.int32()),
            "width": pa.array([bases[x][1].shape[0] for x in layers], pa.int32()),
            "rank": pa.array([bases[x][1].shape[1] for x in layers], pa.int32()),
            "mean": pa.array([bases[x][0].astype(np.float32) for x in layers], pa.large_list(pa.float32())),
            "components": pa.array([bases[x][1].astype(np.float32).reshape(-1) for x in layers], pa.large_list(pa.float32())),
        }
    )


def bases_from_table(table: pa.Table) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """The cache's `basis` table -> layer -> (mean (width,), components (width, rank)), float32."""
    out = {}
    for row in table.to_pylist():
        mean = np.asarray(row["mean"], dtype=np.float32)
        components = np.asarray(row["components"], dtype=np.float32).reshape(row["width"], row["rank"])
        out[int(row["layer"])] = (mean, components)
    return out
