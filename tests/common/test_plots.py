"""Pictures: the synthetic-set grid is drawn pixel for pixel and stays small."""

import numpy as np
import torch
from PIL import Image

from fedsynth.common.plots import save_image_grid


def test_greyscale_grid_is_one_channel_and_drawn_at_native_scale(tmp_path):
    # class c's images are all at grey level c/2; class 2 holds one image, class 1 three
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    images = (labels.float() / 2).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    path = tmp_path / "grid.png"
    save_image_grid(images, labels, ["zero", "half", "one"], path, title="t", scale=2)
    picture = Image.open(path)
    assert picture.mode == "L"
    pixels = np.asarray(picture)
    width = 3 * (28 + 2) + 2  # three images across (the widest row), 2-pixel padding
    assert pixels.shape[1] >= 2 * width and pixels.shape[0] >= 3 * 2 * (28 + 4)
    # the black and the mid-grey images are drawn as solid runs of 2 × 28 pixels: not resampled into blur
    # (white is left out: the background is white too)
    for level in (0, 127):
        runs = [np.convolve(np.abs(row.astype(int) - level) <= 1, np.ones(56), "valid").max() for row in pixels]
        assert max(runs) == 56, level


def test_colour_grid_keeps_its_colour_and_a_large_pool_stays_small(tmp_path):
    save_image_grid(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 1, 1]), ["a", "b"], tmp_path / "rgb.png")
    assert Image.open(tmp_path / "rgb.png").mode == "RGB"
    labels = torch.arange(10).repeat(30)
    save_image_grid(torch.rand(300, 1, 28, 28), labels, [str(c) for c in range(10)], tmp_path / "pool.png")
    assert (tmp_path / "pool.png").stat().st_size < 1_500_000  # one axis per image made 2.6 MB
