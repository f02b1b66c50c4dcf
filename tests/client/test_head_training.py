"""DP-SGD of the head: Opacus' clip, sum, noise and scale, on the accounted Poisson batches, reproducible by secret."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedsynth.client.head_training import linear_head, train_head
from fedsynth.common.privacy.accounting import Mechanism


def _data(n=12, d=5, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) * 3, torch.randint(0, k, (n,), generator=gen)


def test_one_step_is_the_clipped_sum_of_per_example_gradients_over_the_expected_batch():
    x, y = _data()
    clip, lr = 0.5, 0.3
    head = train_head(x, y, 3, Mechanism(0.0, 1.0, 1, clip), lr=lr, momentum=0.9, secret=1)
    start = linear_head(5, 3)
    total = [torch.zeros_like(p) for p in start.parameters()]
    for i in range(len(y)):  # per-example gradients by hand, clipped as Opacus does (C / (‖g‖ + 1e-6), at most 1)
        start.zero_grad()
        F.cross_entropy(start(x[i:i + 1]), y[i:i + 1]).backward()
        grads = [p.grad.clone() for p in start.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads)]
    expected = [-lr * t / len(y) for t in total]  # zero start, first momentum step is plain SGD
    assert torch.allclose(head.weight, expected[0], atol=1e-6)
    assert torch.allclose(head.bias, expected[1], atol=1e-6)


def test_an_empty_batch_takes_a_noise_only_step_of_the_accounted_size():
    x, y = _data(n=40, d=400, k=10)
    sigma, clip, lr, q = 2.0, 0.5, 1.0, 1e-9  # q so small no record is ever sampled
    head = train_head(x, y, 10, Mechanism(sigma, q, 1, clip), lr=lr, momentum=0.0, secret=3)
    expected_batch = max(1, round(q * 40))
    std = float(head.weight.std())
    assert std == pytest.approx(lr * sigma * clip / expected_batch, rel=0.05)


def test_the_same_secret_gives_the_same_head_and_another_secret_another():
    x, y = _data()
    mech = Mechanism(1.0, 0.5, 5, 1.0)
    a = train_head(x, y, 3, mech, lr=0.1, momentum=0.9, secret=7)
    b = train_head(x, y, 3, mech, lr=0.1, momentum=0.9, secret=7)
    c = train_head(x, y, 3, mech, lr=0.1, momentum=0.9, secret=8)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert all(getattr(p, "grad_sample", None) is None for p in a.parameters())  # nothing per-example outlives it


def test_poisson_batches_have_the_accounted_rate(monkeypatch):
    sizes = []
    import fedsynth.client.head_training as module

    original = module.F.cross_entropy

    def spy(logits, labels, **kw):
        sizes.append(len(labels))
        return original(logits, labels, **kw)

    monkeypatch.setattr(module.F, "cross_entropy", spy)
    x, y = _data(n=200)
    train_head(x, y, 3, Mechanism(1.0, 0.1, 300, 1.0), lr=0.1, momentum=0.0, secret=2)
    mean = sum(sizes) / len(sizes)
    assert mean == pytest.approx(20, abs=4 * math.sqrt(200 * 0.1 * 0.9 / 300))


def test_a_centred_head_trains_without_the_centres_direction_and_is_the_same_map_on_the_raw_features():
    x, y = _data(n=30, d=6, k=3)
    centre = torch.linspace(-2.0, 2.0, 6)
    u = centre / centre.norm()
    mech = Mechanism(1.0, 0.5, 4, 0.5)
    centred = train_head(x, y, 3, mech, lr=0.2, momentum=0.9, secret=5, centre=centre)
    inputs = (x - centre) - ((x - centre) @ u)[:, None] * u  # what DP-SGD saw
    on_inputs = train_head(inputs, y, 3, mech, lr=0.2, momentum=0.9, secret=5)
    assert torch.allclose(centred(x), on_inputs(inputs), atol=1e-5)  # the same map, on the raw features
    assert torch.allclose(centred.weight @ u, torch.zeros(3), atol=1e-6)  # no weight along the centre
    assert torch.allclose(centred.bias, on_inputs.bias)  # nothing folded into the bias
    assert not torch.allclose(centred(x), train_head(x, y, 3, mech, lr=0.2, momentum=0.9, secret=5)(x), atol=1e-3)
