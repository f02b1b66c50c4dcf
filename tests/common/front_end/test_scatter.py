"""The front ends are fixed maps: no trainable or data-dependent state, per-image, differentiable in the pixels."""

import pytest
import torch

from fedsynth.common.front_end import FRONT_ENDS, build_front_end


def _images(n: int, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_a_front_end_has_no_parameters_and_the_same_state_whatever_it_has_seen(name):
    first, second = build_front_end(name, (1, 28, 28)), build_front_end(name, (1, 28, 28))
    assert list(first.parameters()) == []
    first(_images(50, seed=1))  # seeing data must not change anything
    state_a, state_b = first.state_dict(), second.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_an_image_features_do_not_depend_on_the_other_images_of_its_batch(name):
    """Per-image normalisation only: batch statistics would make one record's features depend on others'."""
    front_end = build_front_end(name, (1, 28, 28))
    batch = _images(8)
    alone = front_end(batch[:1])
    with_others = front_end(torch.cat([batch[:1], _images(7, seed=5)]))[:1]
    assert torch.allclose(alone, with_others, atol=1e-5)
    assert not torch.allclose(front_end(batch[1:2]), alone)


def test_scatter_features_have_the_tramer_boneh_shape_for_grey_and_rgb_and_are_normalised_per_image():
    grey = build_front_end("scatter", (1, 28, 28))
    assert grey.feature_dim == 81 * 7 * 7
    rgb = build_front_end("scatter", (3, 32, 32))
    assert rgb.feature_dim == 3 * 81 * 8 * 8
    features = grey(_images(4) * 0.3)
    assert torch.allclose(features.mean(1), torch.zeros(4), atol=1e-4)  # group norm: zero mean per image
    assert torch.allclose(grey(_images(4) * 0.3), features)  # deterministic


def test_scatter_is_differentiable_in_the_pixels_so_synthetic_images_can_be_optimised_through_it():
    x = _images(2).requires_grad_(True)
    build_front_end("scatter", (1, 28, 28))(x).pow(2).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_scatter_imports_with_a_scipy_that_lacks_sph_harm():
    """kymatio's 3-D code needs scipy.special.sph_harm (gone in SciPy 1.17); the 2-D frontend must not."""
    import scipy.special

    major, minor = (int(v) for v in scipy.__version__.split(".")[:2])
    if (major, minor) >= (1, 17):
        assert not hasattr(scipy.special, "sph_harm")
    build_front_end("scatter", (1, 28, 28))


def test_unknown_front_end_and_too_small_images_are_refused():
    with pytest.raises(ValueError, match="unknown front end"):
        build_front_end("wavelets", (1, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        build_front_end("scatter", (1, 6, 6))
