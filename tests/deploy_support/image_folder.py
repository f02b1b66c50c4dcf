"""Real image folders for the deployment tests: a built-in dataset written as an ImageFolder tree."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from fedsynth.common.data import ImageDataset


def write_image_folder(dataset: ImageDataset, root: str | os.PathLike) -> Path:
    """Write records as PNG files in an ImageFolder tree (`NN-classname/index.png`). The zero-padded
    prefix keeps the folders' sorted order equal to the label order, so every site built this way
    numbers the classes alike. Used to give simulated deployment sites real image folders."""
    root = Path(root)
    names = [f"{i:02d}-" + "".join(ch if ch.isalnum() else "_" for ch in str(c)) for i, c in enumerate(dataset.classes)]
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    pixels = (dataset.images.clamp(0, 1) * 255).round().to(torch.uint8)
    for i, (image, label) in enumerate(zip(pixels, dataset.labels.tolist())):
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(root / names[label] / f"{i:06d}.png")
    return root
