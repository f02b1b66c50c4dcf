"""The CNN head a server may train on a front end's feature map: its view of the features, and what it learns."""

import pytest
import torch
import torch.nn.functional as F

from fedsynth.common.front_end import build_front_end
from fedsynth.common.front_end.cnn_head import CnnHeadConfig, train_cnn_head
from fedsynth.common.front_end.fit import FrontEndClassifier


def test_the_feature_map_shape_unflattens_the_features_as_the_front_end_flattened_them():
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    scatter = build_front_end("scatter", (1, 28, 28))
    assert scatter.feature_map_shape == (81, 7, 7)
    coefficients = scatter.scattering(images).flatten(1, 2)  # [N, 81, 7, 7] before the per-image norm
    assert torch.allclose(scatter(images).view(-1, *scatter.feature_map_shape), F.group_norm(coefficients, 27),
                          atol=1e-6)
    pixels = build_front_end("none", (1, 28, 28))
    assert torch.equal(pixels(images).view(-1, *pixels.feature_map_shape), images)
    assert build_front_end("scatter", (3, 30, 26)).feature_map_shape == (243, 7, 6)  # sizes not divisible by 4


def _quadrants(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8×8 noise images whose class (0–3) is the quadrant holding a bright 4×4 block."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = 0.3 * torch.rand(n, 1, 8, 8, generator=gen)
    for i, y in enumerate(labels.tolist()):
        r, c = divmod(y, 2)
        images[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] += 0.7
    return images, labels


CONFIG = CnnHeadConfig(width=8, epochs=20, batch_size=50)


def _accuracy(model: FrontEndClassifier, images, labels) -> float:
    return float((model.classify(model.front_end(images)).argmax(1) == labels).float().mean())


def test_it_learns_the_soft_labels_it_is_given_and_not_the_hard_ones():
    front_end = build_front_end("none", (1, 8, 8))
    images, truth = _quadrants(200, seed=0)
    test_images, test_truth = _quadrants(200, seed=1)
    soft = F.one_hot(truth, 4).float() * 0.7 + 0.075  # a distribution peaked on the true quadrant
    wrong = torch.zeros_like(truth)  # hard labels that say class 0 for every image
    model = train_cnn_head(front_end, images, wrong, 4, soft_labels=soft, config=CONFIG)
    assert _accuracy(model, test_images, test_truth) > 0.95
    hard = train_cnn_head(front_end, images, wrong, 4, config=CONFIG)
    assert _accuracy(hard, test_images, test_truth) < 0.5  # without soft labels it learns the (wrong) hard ones


def test_an_image_of_weight_zero_teaches_nothing_and_the_seed_fixes_the_model():
    front_end = build_front_end("none", (1, 8, 8))
    images, truth = _quadrants(200, seed=2)
    flipped = torch.cat([truth[:100], (truth[100:] + 1) % 4])  # the second half mislabelled
    weights = torch.cat([torch.ones(100), torch.zeros(100)])
    test_images, test_truth = _quadrants(200, seed=3)
    model = train_cnn_head(front_end, images, flipped, 4, weights=weights, config=CONFIG, seed=5)
    assert _accuracy(model, test_images, test_truth) > 0.95
    again = train_cnn_head(front_end, images, flipped, 4, weights=weights, config=CONFIG, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = train_cnn_head(front_end, images, flipped, 4, weights=weights, config=CONFIG, seed=6)
    assert not torch.equal(model.head.classifier.weight, other.head.classifier.weight)


def test_it_takes_the_pixel_convnets_input_range_and_its_settings_are_checked():
    front_end = build_front_end("scatter", (1, 28, 28))
    images = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    model = train_cnn_head(front_end, images, torch.arange(10).repeat(2), 10, config=CnnHeadConfig(width=8, epochs=2))
    assert torch.allclose(model(images * 2 - 1), model.classify(front_end(images)), atol=1e-5)
    for bad in (dict(width=0), dict(epochs=0), dict(lr=0.0), dict(lr=float("nan")), dict(weight_decay=-1.0)):
        with pytest.raises(ValueError, match="CNN head"):
            CnnHeadConfig(**bad)
