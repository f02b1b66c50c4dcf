"""Layer-wise gradient-matching distance (dataset condensation's `distance_wb`).

Each output unit's gradient row is compared by cosine distance; summed over units and
layers. Scale-free, so the noised sum of real gradients needs no division by a private
batch size. One-dimensional parameters (biases, norm scales) are skipped, as in DC.
"""

from __future__ import annotations

import torch


def _rows(g: torch.Tensor) -> torch.Tensor:
    return g.reshape(g.shape[0], -1)


def layer_distance(real: torch.Tensor, synthetic: torch.Tensor) -> torch.Tensor:
    """Σ over output units of 1 − cos(real_row, synthetic_row); zero for 1-D parameters."""
    if real.ndim == 1:
        return synthetic.new_zeros(())
    r, s = _rows(real), _rows(synthetic)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + 1e-6)
    return (1.0 - cos).sum()


def matching_distance(real: list[torch.Tensor], synthetic: list[torch.Tensor]) -> torch.Tensor:
    """Sum of `layer_distance` over corresponding parameter gradients."""
    if len(real) != len(synthetic):
        raise ValueError("real and synthetic gradients must list the same parameters")
    return torch.stack([layer_distance(r, s) for r, s in zip(real, synthetic)]).sum()
