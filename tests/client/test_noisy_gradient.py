"""Clipping bound, class routing and noise scale of the one real-data path, against an independent per-example
computation."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedsynth.client.noisy_gradient import NoisyClassGradients
from fedsynth.common.models import ConvNet


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


def _flat(grads, row=0):
    """One class's released gradient (row `row` of every parameter's tensor), flattened."""
    return torch.cat([g[row].flatten() for g in grads])


def _release(releaser, x, label):
    """The release of one class whose batch is all of `x`."""
    return releaser(x, torch.full((x.shape[0],), label), [label])


@pytest.mark.parametrize("clip", [0.01, 1.0, 100.0])
def test_sum_of_clipped_per_example_gradients(clip):
    net = _net()
    x = torch.randn(12, 1, 28, 28) * 3
    release = NoisyClassGradients(net, clip_norm=clip, noise_multiplier=0.0)
    got = _flat(_release(release, x, 3))
    per = _reference_per_example(_net(), x, 3)  # an unwrapped twin with the same weights
    norms = per.norm(dim=1)
    expected = (per * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]).sum(0)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * clip)


def test_every_example_contributes_at_most_clip_norm():
    net = _net()
    x = torch.randn(16, 1, 28, 28) * 5
    clip = 0.05
    release = NoisyClassGradients(net, clip_norm=clip, noise_multiplier=0.0)
    raw = _reference_per_example(_net(), x, 7).norm(dim=1)
    assert (raw > clip).all(), "test needs gradients larger than the bound"
    for i in range(len(x)):
        contribution = _flat(_release(release, x[i : i + 1], 7)).norm()
        assert contribution <= clip * (1 + 1e-4)
        assert contribution == pytest.approx(clip, rel=1e-3)  # large gradients are scaled to the bound, not zeroed


@pytest.mark.parametrize("sigma,clip", [(1.0, 1.0), (2.5, 0.1)])
def test_noise_std_is_sigma_times_clip_once_per_batch(sigma, clip):
    net = _net()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    noiseless = _flat(_release(NoisyClassGradients(net, clip, 0.0), x, 1))
    noisy = _flat(_release(NoisyClassGradients(_net(), clip, sigma, gen), x, 1))  # same weights
    noise = noisy - noiseless
    assert noise.numel() > 5000
    # the std estimate over ≥5k coordinates is within ±3 %; a 10 % scale error fails
    assert noise.std().item() == pytest.approx(sigma * clip, rel=0.03)
    assert abs(noise.mean().item()) < 0.05 * sigma * clip


def test_empty_batch_releases_pure_noise_and_draws_are_fresh():
    net = _net()
    release = NoisyClassGradients(net, 0.5, 2.0, torch.Generator().manual_seed(1))
    empty = torch.zeros(0, 1, 28, 28)
    first, second = _flat(_release(release, empty, 0)), _flat(_release(release, empty, 0))
    assert first.std().item() == pytest.approx(1.0, rel=0.03)
    assert not torch.allclose(first, second)


def test_synthetic_pass_does_not_touch_per_example_state():
    net = _net()
    release = NoisyClassGradients(net, 1.0, 0.0)
    syn = torch.randn(4, 1, 28, 28, requires_grad=True)
    torch.autograd.grad(F.cross_entropy(net(syn), torch.zeros(4, dtype=torch.long)), release.params, create_graph=True)
    assert all(getattr(p, "grad_sample", None) is None for p in release.params)
    x = torch.randn(3, 1, 28, 28)
    fresh = NoisyClassGradients(_net(), 1.0, 0.0)  # same weights, never saw the synthetic pass
    assert torch.allclose(_flat(_release(release, x, 2)), _flat(_release(fresh, x, 2)))
    assert all(getattr(p, "grad_sample", None) is None for p in release.params)  # nothing per-example outlives it


def test_classes_sharing_a_pass_release_what_each_would_alone():
    """Routing: each record's clipped gradient lands in its own class's sum only, as with one pass per class."""
    net = _net()
    torch.manual_seed(1)
    x, labels = torch.randn(20, 1, 28, 28) * 4, torch.tensor([0, 3, 3, 5, 0] * 4)
    together = NoisyClassGradients(net, 0.1, 0.0)(x, labels, [0, 3, 5, 8])
    for row, c in enumerate([0, 3, 5, 8]):
        alone = NoisyClassGradients(_net(), 0.1, 0.0)(x[labels == c], labels[labels == c], [c])
        assert torch.allclose(_flat(together, row), _flat(alone), rtol=1e-4, atol=1e-7)
    assert _flat(together, 3).abs().max() == 0  # class 8 had no records: nothing but (here zero) noise
    assert _flat(together, 1).norm() <= 8 * 0.1 * (1 + 1e-4)  # 8 records of class 3, each ≤ C


def test_each_class_gets_its_own_noise_draw():
    net = _net()
    release = NoisyClassGradients(net, 1.0, 1.5, torch.Generator().manual_seed(2))
    out = release(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long), [0, 1, 2])
    rows = [_flat(out, r) for r in range(3)]
    for r in rows:
        assert r.std().item() == pytest.approx(1.5, rel=0.03)
    corr = torch.corrcoef(torch.stack(rows))
    assert corr.fill_diagonal_(0).abs().max() < 0.05  # independent, not one draw shared by the classes


def test_records_of_classes_not_released_are_refused():
    release = NoisyClassGradients(_net(), 1.0, 0.0)
    with pytest.raises(ValueError, match="belong"):
        release(torch.randn(2, 1, 28, 28), torch.tensor([1, 4]), [1])


def test_one_class_release_is_what_opacus_dp_optimizer_computes():
    """The per-class clipping and sum agree with Opacus' own `DPOptimizer.pre_step()` (noise off)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    x = torch.randn(9, 1, 28, 28) * 3
    ours = _flat(_release(NoisyClassGradients(_net(), 0.2, 0.0), x, 4))
    twin = _net()
    module = GradSampleModule(twin, loss_reduction="sum")
    params = [p for p in twin.parameters()]
    opt = DPOptimizer(torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=0.2,
                      expected_batch_size=1, loss_reduction="sum")
    F.cross_entropy(module(x), torch.full((9,), 4), reduction="sum").backward()
    opt.pre_step()
    assert torch.allclose(ours, torch.cat([p.grad.flatten() for p in params]), rtol=1e-4, atol=1e-7)


def test_partial_release_clips_over_the_released_parameters_only():
    """Released = classifier weight: each record's gradient of that tensor alone is clipped to C and summed; the
    convolutions release nothing and get no per-example gradient."""
    net, clip = _net(), 0.05
    x = torch.randn(10, 1, 28, 28) * 3
    release = NoisyClassGradients(net, clip_norm=clip, noise_multiplier=0.0, released=["classifier.weight"])
    got = _release(release, x, 2)
    assert len(got) == 1 and got[0].shape == (1, *net.classifier.weight.shape)
    names = [k for k, _ in net.named_parameters()]
    per = _reference_per_example(_net(), x, 2)
    start = sum(p.numel() for k, p in net.named_parameters() if names.index(k) < names.index("classifier.weight"))
    per = per[:, start:start + net.classifier.weight.numel()]
    assert (per.norm(dim=1) > clip).all(), "test needs gradients larger than the bound"
    expected = (per * (clip / (per.norm(dim=1) + 1e-6))[:, None]).sum(0)
    assert torch.allclose(got[0].flatten(), expected, rtol=1e-4, atol=1e-7)
    for i in range(3):
        assert _release(release, x[i:i + 1], 2)[0].norm() <= clip * (1 + 1e-4)
    assert all(p.requires_grad for p in net.parameters())  # the held-back parameters are trainable again
    assert all(getattr(p, "grad_sample", None) is None for p in net.parameters())  # nothing per-example is left


@pytest.mark.parametrize("released", [["nope"], []])
def test_partial_release_refuses_unknown_parameters(released):
    with pytest.raises(ValueError, match="released parameters"):
        NoisyClassGradients(_net(), clip_norm=1.0, noise_multiplier=0.0, released=released)
