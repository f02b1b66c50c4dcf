"""DP-SGD for the FedAvg baselines: σ calibrated for every round, Opacus samples and accounts what we planned."""

import math

import pytest
import torch

from fedsynth.client.local_training import plan_dp_sgd, train_locally
from fedsynth.common.models import ConvNet


def test_plan_ends_the_last_round_at_the_target_and_never_above():
    plan = plan_dp_sgd(num_records=6000, batch_size=64, epochs=1, rounds=10, epsilon=2.0, delta=1e-5)
    assert plan.sample_rate == 1 / 94 and plan.steps_per_round == 94
    assert 0.95 * 2.0 <= plan.epsilon_after(10) <= 2.0
    assert plan.epsilon_after(1) < plan.epsilon_after(5) < plan.epsilon_after(10)  # rounds compose
    more_rounds = plan_dp_sgd(6000, 64, 1, 20, 2.0, 1e-5)
    assert more_rounds.noise_multiplier > plan.noise_multiplier  # the same ε over more steps needs more noise
    assert plan_dp_sgd(6000, 64, 1, 10, math.inf, 1e-5).noise_multiplier == 0.0


def test_opacus_samples_and_accounts_exactly_the_planned_round(tiny_mnist):
    plan = plan_dp_sgd(len(tiny_mnist), 32, 2, 4, 3.0, 1e-5)
    model = ConvNet(1, 10, 28, width=8, norm="groupnorm")
    before = [p.clone() for p in model.parameters()]
    trained, steps, round_epsilon = train_locally(model, tiny_mnist, plan, 32, 2, lr=0.05, seed=0)
    assert steps == plan.steps_per_round == 2 * math.ceil(300 / 32)
    assert round_epsilon == pytest.approx(plan.epsilon_after(1), rel=1e-6)  # same σ, same q, same steps
    assert not hasattr(trained, "_module") and any(not torch.equal(a, b) for a, b in zip(before, trained.parameters()))


def test_without_dp_there_is_no_accountant(tiny_mnist):
    plan = plan_dp_sgd(len(tiny_mnist), 32, 1, 1, math.inf, 1e-5)
    _, steps, round_epsilon = train_locally(ConvNet(1, 10, 28, width=8, norm="groupnorm"), tiny_mnist, plan, 32, 1,
                                            lr=0.05, seed=0)
    assert steps == math.ceil(300 / 32) and math.isinf(round_epsilon)
