"""The pixel engine's once-per-run mechanism: Poisson masks from the secret, per-class routing, clipping and noise,
and a network whose parameters are reloaded between draws without rebuilding its hooks."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedsynth.client.class_release import PoissonClassRelease, class_groups
from fedsynth.common.models import ConvNet
from fedsynth.common.privacy.accounting import Mechanism

RELEASED = ["classifier.weight"]


def _net(seed=0):
    torch.manual_seed(seed)
    return ConvNet(channels=1, num_classes=3, image_size=28, width=4, depth=2)


def _records(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 1, 28, 28, generator=g) * 2 - 1 for n in (7, 5, 9)]


def _release(net, by_class, sigma=0.0, q=1.0, clip=0.05, secret=11, per_pass=1):
    return PoissonClassRelease(net, by_class, Mechanism(sigma, q, 10, clip), secret, RELEASED,
                               class_groups(3, per_pass, torch.device("cpu")), None)


def _reference(net, x, label, clip):
    """Σ clip(∇ classifier.weight) over `x`, by torch.func (independent of Opacus)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(w, xi):
        return F.cross_entropy(functional_call(net, {**params, "classifier.weight": w}, (xi[None],)),
                               torch.tensor([label]))

    per = vmap(grad(loss), in_dims=(None, 0))(params["classifier.weight"], x)
    norms = per.reshape(x.shape[0], -1).norm(dim=1)
    return (per * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None, None]).sum(0)


@pytest.mark.parametrize("per_pass", [1, 3])
def test_every_class_gets_its_own_records_clipped_and_summed(per_pass):
    net, by_class = _net(), _records()
    release = _release(net, by_class, per_pass=per_pass)
    release.start_iteration(0)
    (got,) = release([None] * 3)
    for c, x in enumerate(by_class):
        assert torch.allclose(got[c], _reference(_net(), x, c, 0.05), atol=1e-6), c  # a hook-free copy


def test_a_class_release_depends_on_that_class_only():
    by_class = _records()
    changed = [by_class[0], -by_class[1], by_class[2]]
    first, second = _release(_net(), by_class), _release(_net(), changed)
    first.start_iteration(0), second.start_iteration(0)
    (a,), (b,) = first([None] * 3), second([None] * 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and not torch.allclose(a[1], b[1])


def test_masks_and_noise_follow_the_secret_and_the_iteration():
    by_class = _records()

    def draw(secret, t):
        release = _release(_net(), by_class, sigma=2.0, q=0.5, secret=secret)
        release.start_iteration(t)
        return release([None] * 3)[0]

    assert torch.equal(draw(5, 3), draw(5, 3))  # a resumed run repeats iteration 3 exactly
    assert not torch.allclose(draw(5, 3), draw(5, 4)) and not torch.allclose(draw(5, 3), draw(6, 3))


def test_noise_has_the_accounted_scale():
    net = _net()
    empty = [torch.zeros(0, 1, 28, 28)] * 3  # no records: each class's release is pure N(0, σ²C²)
    release = _release(net, empty, sigma=3.0, clip=0.5)
    draws = []
    for t in range(20):
        release.start_iteration(t)
        draws.append(release([None] * 3)[0])
    std = torch.stack(draws).std()
    assert abs(float(std) - 1.5) < 0.05


def test_reloaded_parameters_are_the_ones_released():
    """The run's network is built once: loading the next draw must change what is released, with the same hooks."""
    net, by_class = _net(0), _records()
    release = _release(net, by_class)
    release.start_iteration(0)
    before = release([None] * 3)[0]
    with torch.no_grad():
        net.load_state_dict(_net(1).state_dict())
    release.start_iteration(0)
    after = release([None] * 3)[0]
    assert not torch.allclose(before, after)
    assert torch.allclose(after[2], _reference(_net(1), by_class[2], 2, 0.05), atol=1e-6)
    assert all(p.grad_sample is None for p in net.parameters())  # nothing per-example outlives a release


def test_a_release_needs_its_iteration_seeded():
    release = _release(_net(), _records())
    with pytest.raises(RuntimeError, match="start_iteration"):
        release([None] * 3)
