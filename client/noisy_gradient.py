"""One private release: the clipped, noised sum of per-example gradients of one class batch.

Per-example gradients come from Opacus' `GradSampleModule`; flat clipping to `clip_norm`
and one Gaussian draw of standard deviation `noise_multiplier · clip_norm` come from
Opacus' `DPOptimizer.pre_step()` (it never steps: the optimiser only hosts the
parameters). This is the only place real records enter the computation.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

# Opacus' hooks stay registered while disabled; PyTorch then warns on every backward that
# does not need them (the synthetic pass, network updates on S). The warning is expected.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


class NoisyClassGradient:
    """Computes ĝ_c = Σ_i clip(∇θ ℓ(f(x_i), c)) + N(0, σ²C²I) for one network."""

    def __init__(
        self, model: nn.Module, clip_norm: float, noise_multiplier: float, generator: torch.Generator | None = None
    ) -> None:
        self.model = model
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = DPOptimizer(
            torch.optim.SGD(self.params, lr=0.0),
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip_norm,
            expected_batch_size=1,
            loss_reduction="sum",
            generator=generator,
        )
        self.module.disable_hooks()  # hooks run only inside __call__

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        self.module.enable_hooks()
        try:
            yield
        finally:
            self.module.disable_hooks()

    def __call__(self, x: torch.Tensor, label: int) -> list[torch.Tensor]:
        """The noised gradient of class `label` for batch `x` (which may be empty), one tensor per parameter."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._hooks(), torch.enable_grad():
            logits = self.module(x)
            targets = torch.full((x.shape[0],), label, dtype=torch.long, device=x.device)
            F.cross_entropy(logits, targets, reduction="sum").backward()
        self.optimizer.pre_step()
        grads = [p.grad.detach().clone() for p in self.params]
        self.optimizer.zero_grad(set_to_none=True)
        return grads
