"""DP-SGD of a linear head on fixed front-end features: the front-end engine's only use of real records.

Each step draws a Poisson batch (rate q) with the run's secret generator, computes per-example
gradients through Opacus' `GradSampleModule`, and lets Opacus' `DPOptimizer` clip each to C, sum
them, add N(0, σ²C²) and divide by the expected batch: T steps of exactly the mechanism in the
ledger. Everything derived from the final head (synthetic images, soft labels) is post-processing.
A resumed run repeats the same steps with the same secret, so it reaches the same head.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from tqdm.auto import tqdm

from fedsynth.client.random_streams import generator
from fedsynth.common.models import linear_head
from fedsynth.common.privacy.accounting import Mechanism

__all__ = ["linear_head", "train_head"]

warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


def train_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, mechanism: Mechanism, *, lr: float,
               momentum: float, secret: int, progress: bool = False, on_step: Callable[[int], None] | None = None,
               initial: dict[str, torch.Tensor] | None = None, centre: torch.Tensor | None = None) -> torch.nn.Linear:
    """`mechanism.steps` DP-SGD steps of a linear head on `features` [n, D] with `labels`, from zero or from the
    `initial` state (a FedAvg round's global head). With a non-zero `centre` (a released mean feature) it trains on
    features − centre with the centre's direction u projected out, and returns the head with no weight along u:
    then W·centre = 0, so it is the same map on the features themselves, bias unchanged. Folding a centre into
    the bias instead (bias − W·centre) leaves logit offsets of several units that a set's span cannot carry
    (bench/RESULTS.md)."""
    device = features.device
    direction = None
    if centre is not None and float(centre.norm()) > 0:
        centre = centre.to(device, features.dtype)
        direction = centre / centre.norm()

    def inputs(rows: torch.Tensor) -> torch.Tensor:
        """The rows as the head sees them: centred and without the centre's direction (per batch: no copy of
        all the features, which for one party holding 60,000 records would be another gigabyte)."""
        if direction is None:
            return rows
        rows = rows - centre
        return rows - (rows @ direction)[:, None] * direction

    n = features.shape[0]
    head = linear_head(features.shape[1], num_classes)
    if initial is not None:
        head.load_state_dict(initial)
    head = head.to(device)
    module = GradSampleModule(head, batch_first=True, loss_reduction="sum", strict=True)
    sampling, noise = generator(secret), generator(secret + 1, device)
    optimizer = DPOptimizer(torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum),
                            noise_multiplier=mechanism.noise_multiplier, max_grad_norm=mechanism.clip_norm,
                            expected_batch_size=max(1, round(mechanism.sample_rate * n)), loss_reduction="mean",
                            generator=noise)
    for step in tqdm(range(mechanism.steps), disable=not progress, desc="DP-SGD", unit="step", dynamic_ncols=True):
        batch = (torch.rand(n, generator=sampling) < mechanism.sample_rate).nonzero().squeeze(1).to(device)
        optimizer.zero_grad(set_to_none=True)
        # an empty Poisson batch still takes its step: Opacus clips nothing and adds the noise, as accounted
        F.cross_entropy(module(inputs(features[batch])), labels[batch], reduction="sum").backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
    for p in head.parameters():
        p.grad_sample = None
        p.grad = None
    if direction is not None:
        with torch.no_grad():  # post-processing: along u the head never saw a feature, only noise
            head.weight -= (head.weight @ direction)[:, None] * direction
    return head.eval()
