"""Layer-wise gradient-matching distance (dataset condensation's `distance_wb`).

Each output unit's gradient row is compared by cosine distance; summed over units and
layers (`per="unit"`). Or each layer's whole gradient is one vector (`per="layer"`): under
noise a row whose signal is small (a classifier row of another class, a quiet channel) is
mostly noise, yet a per-unit cosine counts it as much as the loudest; one cosine per layer
weighs rows by their size. Scale-free either way, so the noised sum of real gradients needs
no division by a private batch size. One-dimensional parameters (biases, norm scales) are
skipped, as in DC. `batch_dims` leading dimensions (e.g. one per class) are kept apart, so
all classes are matched in one pass.
"""

from __future__ import annotations

import torch


UNITS = ("unit", "layer")


def layer_distance(real: torch.Tensor, synthetic: torch.Tensor, batch_dims: int = 0, per: str = "unit") -> torch.Tensor:
    """Σ over output units (or the one layer) of 1 − cos(real, synthetic); zero for 1-D parameters. Shape: the batch
    dims."""
    if per not in UNITS:
        raise ValueError(f"unknown matching unit {per!r}; choose one of {', '.join(UNITS)}")
    lead = real.shape[:batch_dims]
    if real.ndim - batch_dims == 1:
        return synthetic.new_zeros(lead)
    rows = real.shape[batch_dims] if per == "unit" else 1
    r = real.reshape(*lead, rows, -1)
    s = synthetic.reshape(*lead, rows, -1)
    cos = (r * s).sum(-1) / (r.norm(dim=-1) * s.norm(dim=-1) + 1e-6)
    return (1.0 - cos).sum(-1)


def matching_distance(real: list[torch.Tensor], synthetic: list[torch.Tensor], batch_dims: int = 0,
                      per: str = "unit") -> torch.Tensor:
    """Sum of `layer_distance` over corresponding parameter gradients (one value per batch index)."""
    if len(real) != len(synthetic):
        raise ValueError("real and synthetic gradients must list the same parameters")
    return torch.stack([layer_distance(r, s, batch_dims, per) for r, s in zip(real, synthetic)]).sum(0)
