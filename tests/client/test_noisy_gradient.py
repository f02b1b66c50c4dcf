"""Clipping bound and noise scale of the one real-data path, against an independent per-example computation."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from client.noisy_gradient import NoisyClassGradient
from common.models import ConvNet


def _net(seed=0):
    torch.manual_seed(seed)
    return ConvNet(channels=1, num_classes=10, image_size=28, width=8, depth=2)


def _reference_per_example(net, x, label):
    """Per-example gradients by torch.func, independent of Opacus, flattened to [B, P]."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, xi):
        return F.cross_entropy(functional_call(net, p, (xi[None],)), torch.tensor([label]))

    per = vmap(grad(loss), in_dims=(None, 0))(params, x)
    return torch.cat([per[k].reshape(x.shape[0], -1) for k, _ in net.named_parameters()], dim=1)


def _flat(grads):
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("clip", [0.01, 1.0, 100.0])
def test_sum_of_clipped_per_example_gradients(clip):
    net = _net()
    x = torch.randn(12, 1, 28, 28) * 3
    release = NoisyClassGradient(net, clip_norm=clip, noise_multiplier=0.0)
    got = _flat(release(x, 3))
    per = _reference_per_example(_net(), x, 3)  # an unwrapped twin with the same weights
    norms = per.norm(dim=1)
    expected = (per * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * clip)


def test_every_example_contributes_at_most_clip_norm():
    net = _net()
    x = torch.randn(16, 1, 28, 28) * 5
    clip = 0.05
    release = NoisyClassGradient(net, clip_norm=clip, noise_multiplier=0.0)
    raw = _reference_per_example(_net(), x, 7).norm(dim=1)
    assert (raw > clip).all(), "test needs gradients larger than the bound"
    for i in range(len(x)):
        contribution = _flat(release(x[i : i + 1], 7)).norm()
        assert contribution <= clip * (1 + 1e-4)
        assert contribution == pytest.approx(clip, rel=1e-3)  # large gradients are scaled to the bound, not zeroed


@pytest.mark.parametrize("sigma,clip", [(1.0, 1.0), (2.5, 0.1)])
def test_noise_std_is_sigma_times_clip_once_per_batch(sigma, clip):
    net = _net()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    noiseless = _flat(NoisyClassGradient(net, clip, 0.0)(x, 1))
    noisy = _flat(NoisyClassGradient(_net(), clip, sigma, gen)(x, 1))  # same weights
    noise = noisy - noiseless
    assert noise.numel() > 5000
    # the std estimate over ≥5k coordinates is within ±3 %; a 10 % scale error fails
    assert noise.std().item() == pytest.approx(sigma * clip, rel=0.03)
    assert abs(noise.mean().item()) < 0.05 * sigma * clip


def test_empty_batch_releases_pure_noise_and_draws_are_fresh():
    net = _net()
    release = NoisyClassGradient(net, 0.5, 2.0, torch.Generator().manual_seed(1))
    empty = torch.zeros(0, 1, 28, 28)
    first, second = _flat(release(empty, 0)), _flat(release(empty, 0))
    assert first.std().item() == pytest.approx(1.0, rel=0.03)
    assert not torch.allclose(first, second)


def test_synthetic_pass_does_not_touch_per_example_state():
    net = _net()
    release = NoisyClassGradient(net, 1.0, 0.0)
    syn = torch.randn(4, 1, 28, 28, requires_grad=True)
    torch.autograd.grad(F.cross_entropy(net(syn), torch.zeros(4, dtype=torch.long)), release.params, create_graph=True)
    assert all(getattr(p, "grad_sample", None) is None for p in release.params)
    x = torch.randn(3, 1, 28, 28)
    fresh = NoisyClassGradient(_net(), 1.0, 0.0)  # same weights, never saw the synthetic pass
    assert torch.allclose(_flat(release(x, 2)), _flat(fresh(x, 2)))
