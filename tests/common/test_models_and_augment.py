import pytest
import torch

from fedsynth.common.augment import Augmenter
from fedsynth.common.models import ConvNet, ModelNotPrivateError, check_private


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_convnet_shapes(size, channels):
    net = ConvNet(channels, 7, size, width=8, depth=3)
    assert net(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_batchnorm_is_refused_by_opacus_validator():
    check_private(ConvNet(norm="instancenorm", width=8))
    check_private(ConvNet(norm="groupnorm", width=8))
    with pytest.raises(ModelNotPrivateError, match="BatchNorm"):
        check_private(ConvNet(norm="batchnorm", width=8))


def test_siamese_augmentation_is_shared_and_differentiable():
    aug = Augmenter()
    params = aug.sample(torch.Generator().manual_seed(0))
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    y = x[:2].clone().requires_grad_(True)
    out_x, out_y = aug.apply(x, params), aug.apply(y, params)
    assert torch.allclose(out_x[:2], out_y)  # same transform for every image of both batches
    out_y.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not torch.allclose(out_x, x)
    assert aug.apply(x[:0], params).shape == (0, 1, 28, 28)


def test_per_example_augmentation_differs_between_images():
    aug = Augmenter()
    x = torch.rand(1, 1, 28, 28).repeat(4, 1, 1, 1)
    out = aug.apply(x, aug.sample(torch.Generator().manual_seed(0), per_example=4))
    assert not torch.allclose(out[0], out[1])
