"""Local training for the FedAvg baselines: record-level DP-SGD through Opacus' PrivacyEngine, or plain SGD.

A site that takes part in R rounds of `epochs` local epochs at Poisson rate q = 1/⌈n/B⌉
runs R·epochs·⌈n/B⌉ subsampled Gaussian steps; σ is calibrated once, for all of them, so
the site ends the last round exactly at its target ε and never above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from fedsynth.common.data import ImageDataset, to_model_space
from fedsynth.common.privacy.accounting import (DEFAULT_ACCOUNTANT, Mechanism, calibrate_noise_multiplier,
                                                 epsilon_of_history)


@dataclass(frozen=True)
class DpSgdPlan:
    """The whole mechanism one site spends over every round, fixed before training starts."""

    noise_multiplier: float  # 0: no DP (plain FedAvg)
    sample_rate: float
    steps_per_round: int
    rounds: int
    clip_norm: float
    delta: float
    accountant: str = DEFAULT_ACCOUNTANT

    def mechanism(self, rounds_done: int) -> Mechanism:
        return Mechanism(self.noise_multiplier, self.sample_rate, rounds_done * self.steps_per_round, self.clip_norm)

    def epsilon_after(self, rounds_done: int) -> float:
        """ε spent after `rounds_done` rounds (∞ without noise)."""
        return epsilon_of_history([self.mechanism(rounds_done)], self.delta, self.accountant)


def plan_dp_sgd(num_records: int, batch_size: int, epochs: int, rounds: int, epsilon: float, delta: float,
                clip_norm: float = 1.0, accountant: str = DEFAULT_ACCOUNTANT) -> DpSgdPlan:
    """σ for `rounds` rounds of `epochs` Poisson-sampled epochs at expected batch `batch_size`; ε = ∞ means no DP."""
    if num_records < 1 or batch_size < 1 or epochs < 1 or rounds < 1:
        raise ValueError("records, batch size, epochs and rounds must all be at least 1")
    batches = math.ceil(num_records / batch_size)
    sample_rate = 1.0 / batches  # what Opacus' DPDataLoader uses for a loader of `batches` batches
    steps_per_round = epochs * batches
    sigma = 0.0 if math.isinf(epsilon) else calibrate_noise_multiplier(epsilon, delta, sample_rate,
                                                                       rounds * steps_per_round, accountant)
    return DpSgdPlan(sigma, sample_rate, steps_per_round, rounds, clip_norm, delta, accountant)


def train_locally(model: torch.nn.Module, data: ImageDataset, plan: DpSgdPlan, batch_size: int, epochs: int,
                  lr: float, seed: int, device: torch.device = torch.device("cpu"),
                  progress: bool = False) -> tuple[torch.nn.Module, int, float]:
    """One round at one site: `epochs` epochs of DP-SGD (σ > 0) or SGD. Returns the model, the steps taken and
    the ε of this round alone by Opacus' own accountant (what its PrivacyEngine saw; ∞ without DP)."""
    torch.manual_seed(seed)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = DataLoader(TensorDataset(to_model_space(data.images), data.labels), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    if plan.noise_multiplier > 0:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant=plan.accountant)
        model, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                       noise_multiplier=plan.noise_multiplier,
                                                       max_grad_norm=plan.clip_norm, poisson_sampling=True)
    steps = 0
    bar = tqdm(total=epochs * len(loader), desc="DP-SGD" if plan.noise_multiplier > 0 else "SGD", unit="step",
               disable=not progress)
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            # a Poisson batch may be empty: Opacus then clips nothing and takes a noise-only step, as accounted
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            optimizer.step()
            steps += 1
            bar.update()
    bar.close()
    if plan.noise_multiplier == 0:
        return model.eval(), steps, math.inf
    round_epsilon = engine.accountant.get_epsilon(plan.delta)
    return model._module.eval(), steps, round_epsilon  # unwrapped: plain parameters go back to the server
