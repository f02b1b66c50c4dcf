"""Private releases: per class, the clipped, noised sum of per-example gradients of its batch.

Per-example gradients come from Opacus' `GradSampleModule`. Each example's gradient (all
released parameters together) is clipped to `clip_norm` as Opacus' `DPOptimizer` does, the clipped
gradients are summed per class, and every class's sum gets its own Gaussian draw of
standard deviation `noise_multiplier · clip_norm`: per class exactly the mechanism of one
DP-SGD step. Opacus sums all examples into one gradient, so the per-class sum is done here
(one weighted contraction), which lets several classes share one per-example pass — on a GPU
the engine is bound by kernel launches, not FLOPs. This is the only place real records enter.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import nn

# PyTorch warns that a full backward hook fires although no input requires gradients: true of
# every release (records are data, not parameters), and expected.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

# Opacus' DPOptimizer clips with factor C / (‖g‖ + 1e-6), capped at 1; the same here.
_NORM_EPS = 1e-6


class NoisyClassGradients:
    """ĝ_c = Σ_{i: y_i = c} clip_C(∇θ ℓ(f(x_i), c)) + N(0, σ²C²I), for the classes asked, from one pass."""

    def __init__(
        self, model: nn.Module, clip_norm: float, noise_multiplier: float, generator: torch.Generator | None = None,
        released: Sequence[str] | None = None,
    ) -> None:
        """`released` names the parameters whose gradient is released (all trainable ones when None): only
        they enter the clipped norm and get noise; the others get no per-example gradient at all."""
        if clip_norm <= 0 or noise_multiplier < 0:
            raise ValueError(f"need clip_norm > 0 and noise_multiplier ≥ 0, got {clip_norm}, {noise_multiplier}")
        self.model = model
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        names = list(trainable) if released is None else list(released)
        unknown = [n for n in names if n not in trainable]
        if unknown or not names:
            raise ValueError(f"released parameters must be trainable parameters of the model, got {unknown or names}")
        self.params = [trainable[n] for n in names]
        self.trainable = list(trainable.values())
        # parameters registered before the first released one (upstream, in a feed-forward net) get no gradient at
        # all, so a classifier-only release skips the convolutions' backward; Opacus needs every module the backward
        # reaches to keep its hooks, so later unreleased ones (biases, norms) are computed and left unused
        order = list(trainable)
        first = min(order.index(n) for n in names)
        self.held_back = [trainable[n] for n in order[:first]]
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.generator = generator
        self.module.disable_hooks()  # hooks run only inside __call__

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        self.module.enable_hooks()
        # no gradient flows to what is not released (a classifier-only release skips the convs)
        for p in self.held_back:
            p.requires_grad_(False)
        try:
            yield
        finally:
            self.module.disable_hooks()
            for p in self.held_back:
                p.requires_grad_(True)
            # nothing per-example outlives the release (nor unreleased ones computed on the way)
            for p in self.trainable:
                p.grad_sample = None
                p.grad = None

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> list[torch.Tensor]:
        """One tensor [len(classes), *p.shape] per parameter; row j is class classes[j]'s noised sum.

        `x` holds the sampled records of those classes (possibly none of some, or none at all)
        and `labels` their classes; a class with no records releases pure noise.
        """
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"{x.shape[0]} records but {labels.shape[0]} labels")
        labels = labels.to(x.device)
        classes_t = torch.as_tensor(list(classes), dtype=torch.long, device=x.device)
        member = labels[:, None] == classes_t[None, :]  # [B, k]
        if not bool(member.any(dim=1).all()):
            raise ValueError("every record must belong to one of the classes being released")
        sums = [p.new_zeros((len(classes_t), *p.shape)) for p in self.params]
        if x.shape[0] > 0:
            with self._hooks(), torch.enable_grad():
                F.cross_entropy(self.module(x), labels, reduction="sum").backward()
                per_example = [p.grad_sample.reshape(x.shape[0], -1) for p in self.params]
                norms = torch.stack([g.norm(dim=1) for g in per_example], dim=1).norm(dim=1)
                factor = (self.clip_norm / (norms + _NORM_EPS)).clamp(max=1.0)
                weights = member.to(factor.dtype) * factor[:, None]  # [B, k]: clip factor routed to its class
                sums = [(weights.T @ g).reshape(s.shape) for g, s in zip(per_example, sums)]
        std = self.noise_multiplier * self.clip_norm
        if std > 0:
            sums = [s + torch.normal(0.0, std, s.shape, generator=self.generator, device=s.device) for s in sums]
        return [s.detach() for s in sums]
