"""Layer-wise gradient-matching distance (dataset condensation's `distance_wb`).

Each output unit's gradient row is compared by cosine distance; summed over units and
layers. Scale-free, so the noised sum of real gradients needs no division by a private
batch size. One-dimensional parameters (biases, norm scales) are skipped, as in DC.
`batch_dims` leading dimensions (e.g. one per class) are kept apart, so all classes are
matched in one pass.
"""

from __future__ import annotations

import torch


def layer_distance(real: torch.Tensor, synthetic: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """Σ over output units of 1 − cos(real_row, synthetic_row); zero for 1-D parameters. Shape: the batch dims."""
    lead = real.shape[:batch_dims]
    if real.ndim - batch_dims == 1:
        return synthetic.new_zeros(lead)
    r = real.reshape(*real.shape[: batch_dims + 1], -1)
    s = synthetic.reshape(*synthetic.shape[: batch_dims + 1], -1)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + 1e-6)
    return (1.0 - cos).sum(-1)


def matching_distance(real: list[torch.Tensor], synthetic: list[torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
    """Sum of `layer_distance` over corresponding parameter gradients (one value per batch index)."""
    if len(real) != len(synthetic):
        raise ValueError("real and synthetic gradients must list the same parameters")
    return torch.stack([layer_distance(r, s, batch_dims) for r, s in zip(real, synthetic)]).sum(0)
