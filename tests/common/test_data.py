import gzip
import os
import random
import shutil

import pytest
import torch
from PIL import Image

from fedsynth.common import data
from fedsynth.common.data import (DEBIAN_FASHION_MNIST, DataError, load_dataset, load_fashion_mnist, load_image_folder,
                         load_mnist5k)


def test_mnist5k_split_is_balanced_and_disjoint():
    train, test = load_mnist5k(train=True), load_mnist5k(train=False)
    assert len(train) == 4000 and len(test) == 1000
    assert train.class_counts() == [400] * 10 and test.class_counts() == [100] * 10
    assert train.images.shape[1:] == (1, 28, 28) and 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.images.max() > 0.9  # pixels were scaled from 0..255, not left at 0..1/255
    flat_train = {hash(row.numpy().tobytes()) for row in train.images.flatten(1)}
    assert not any(hash(row.numpy().tobytes()) in flat_train for row in test.images.flatten(1))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_files(tmp_path):
    train = load_fashion_mnist(train=True, root=tmp_path)
    test = load_fashion_mnist(train=False, root=tmp_path)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.class_counts() == [6000] * 10
    assert train.classes[0] == "T-shirt/top"


def test_missing_fashion_mnist_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("fedsynth.common.data.DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(train=True, root=tmp_path / "empty")


def test_fashion_mnist_staging_survives_a_concurrent_writer(tmp_path, monkeypatch):
    """Sites or bench rows started at once stage the Debian files into one cache: a second writer that runs
    while the first is mid-copy (simulated by re-entering from inside the copy) must not break either."""
    debian = tmp_path / "debian"
    debian.mkdir()
    contents = {name: f"{name} ".encode() * 1000 for name in data.FASHION_MNIST_FILES}
    for name, body in contents.items():
        with gzip.open(debian / f"{name}.gz", "wb") as f:
            f.write(body)
    monkeypatch.setattr("fedsynth.common.data.DEBIAN_FASHION_MNIST", debian)
    real_copy, interleaved = shutil.copyfileobj, []

    def copy_with_a_second_writer(src, dst, *args):
        real_copy(src, dst, *args)
        if not interleaved:  # the first writer has its temporary file full, not yet renamed
            interleaved.append(True)
            assert data._stage_debian_fashion_mnist(tmp_path / "cache")

    monkeypatch.setattr("fedsynth.common.data.shutil.copyfileobj", copy_with_a_second_writer)
    assert data._stage_debian_fashion_mnist(tmp_path / "cache")
    raw = tmp_path / "cache" / "FashionMNIST" / "raw"
    assert interleaved and sorted(p.name for p in raw.iterdir()) == sorted(contents)  # no temporary left behind
    assert all((raw / name).read_bytes() == body for name, body in contents.items())


def _write_folder(root, dataset, classes=(0, 1, 2), per_class=4, mode="L", size=28):
    for c in classes:
        (root / f"class_{c}").mkdir(parents=True)
        for i, img in enumerate(dataset.images[dataset.labels == c][:per_class]):
            pil = Image.fromarray((img[0].numpy() * 255).astype("uint8"), "L").convert(mode).resize((size, size))
            pil.save(root / f"class_{c}" / f"{i}.png")


def test_image_folder_any_size_and_channels(tmp_path, tiny_mnist):
    _write_folder(tmp_path / "rgb", tiny_mnist, mode="RGB", size=40)
    ds = load_image_folder(tmp_path / "rgb", image_size=32)
    assert ds.images.shape == (12, 3, 32, 32) and ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.classes == ["class_0", "class_1", "class_2"]
    _write_folder(tmp_path / "grey", tiny_mnist)
    grey = load_dataset(data_dir=tmp_path / "grey")
    assert grey.images.shape == (12, 1, 28, 28)
    original = tiny_mnist.images[tiny_mnist.labels == 0][0]
    assert torch.allclose(grey.images[0], original, atol=1 / 255 + 1e-6)  # the pixels survive the round trip


def test_image_folder_names_unreadable_files(tmp_path, tiny_mnist):
    _write_folder(tmp_path, tiny_mnist)
    (tmp_path / "class_1" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "class_2" / "cut.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(DataError, match="2 unreadable") as err:
        load_image_folder(tmp_path)
    assert "broken.png" in str(err.value) and "cut.jpg" in str(err.value)


def test_image_folder_with_one_class_is_refused(tmp_path, tiny_mnist):
    _write_folder(tmp_path, tiny_mnist, classes=(5,))
    with pytest.raises(DataError, match="at least two classes"):
        load_image_folder(tmp_path)


def test_image_folder_with_empty_class_loads_and_reports_it(tmp_path, tiny_mnist):
    _write_folder(tmp_path, tiny_mnist, classes=(0, 1))
    (tmp_path / "class_9").mkdir()
    ds = load_image_folder(tmp_path)
    assert ds.class_counts() == [4, 4, 0]  # the engine then refuses it by name


def test_missing_folder_and_bad_choice(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="exactly one"):
        load_dataset("mnist5k", tmp_path)


# ---- hostile files in an image folder --------------------------------------------------------
@pytest.mark.timeout(20)
def test_image_folder_skips_a_fifo_named_like_an_image(tmp_path, tiny_mnist, capsys):
    """Opening a FIFO for reading blocks until a writer comes: the loader used to hang forever."""
    _write_folder(tmp_path, tiny_mnist)
    os.mkfifo(tmp_path / "class_1" / "x.png")
    ds = load_image_folder(tmp_path)
    assert ds.class_counts() == [4, 4, 4]
    err = capsys.readouterr().err
    assert "skipped 1 " in err and "x.png" in err and len(err.strip().splitlines()) == 1


@pytest.mark.timeout(20)
def test_image_opener_refuses_a_fifo_swapped_in_after_the_check(tmp_path):
    """The path may turn into a FIFO between the lstat and the open: the open must not block, and the
    fstat on the open handle must refuse it."""
    os.mkfifo(tmp_path / "swapped.png")
    with pytest.raises(DataError, match="swapped.png: not a regular file"):
        data._open_image(str(tmp_path / "swapped.png"))


@pytest.mark.timeout(20)
def test_image_folder_follows_links_to_files_only(tmp_path, tiny_mnist, capsys):
    _write_folder(tmp_path, tiny_mnist)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "class_0" / "to_fifo.png").symlink_to(tmp_path / "fifo")
    (tmp_path / "class_0" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "class_0" / "to_file.png").symlink_to(tmp_path / "class_1" / "0.png")
    ds = load_image_folder(tmp_path)
    assert ds.class_counts() == [5, 4, 4]  # the link to a regular file is read, the other two are skipped
    assert "skipped 2 " in capsys.readouterr().err


def test_image_folder_skips_a_directory_named_like_an_image(tmp_path, tiny_mnist, capsys):
    _write_folder(tmp_path, tiny_mnist)
    (tmp_path / "class_2" / "a.png").mkdir()
    assert load_image_folder(tmp_path).class_counts() == [4, 4, 4]
    assert capsys.readouterr().err == ""  # nothing was skipped that looked like an image file


@pytest.mark.timeout(20)
def test_image_folder_class_with_only_a_fifo_has_no_records(tmp_path, tiny_mnist):
    _write_folder(tmp_path, tiny_mnist, classes=(0, 1))
    (tmp_path / "class_9").mkdir()
    os.mkfifo(tmp_path / "class_9" / "only.png")
    assert load_image_folder(tmp_path).class_counts() == [4, 4, 0]  # the engine refuses it by name


# 64 x 64 = 4096 pixels: over twice the limit (PIL's error), or just over it (PIL's warning, an error here too)
@pytest.mark.parametrize("limit", [1000, 3000])
def test_image_folder_refuses_a_decompression_bomb_by_name(tmp_path, tiny_mnist, monkeypatch, limit):
    _write_folder(tmp_path, tiny_mnist)
    Image.new("L", (64, 64)).save(tmp_path / "class_0" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # 28 x 28 = 784 stays under it
    with pytest.raises(DataError) as err:
        load_image_folder(tmp_path)
    message = str(err.value)
    assert message == f"{tmp_path / 'class_0' / 'bomb.png'}: image too large to decode safely (decompression bomb)"


def test_image_folder_refuses_random_bytes_by_name_in_one_line(tmp_path, tiny_mnist):
    _write_folder(tmp_path, tiny_mnist)
    (tmp_path / "class_1" / "noise.png").write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(DataError, match="not a readable image") as err:
        load_image_folder(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "class_1" / "noise.png")) and "\n" not in str(err.value)


def test_image_folder_refuses_a_format_the_extension_does_not_call_for(tmp_path, tiny_mnist):
    """PIL would try every plugin it has (EPS hands the file to Ghostscript); only the named formats are decoded."""
    _write_folder(tmp_path, tiny_mnist)
    Image.new("L", (28, 28)).save(tmp_path / "class_1" / "really.png", format="GIF")
    with pytest.raises(DataError, match="really.png: not a readable image"):
        load_image_folder(tmp_path)


def test_image_folder_ignores_hidden_files_and_folders(tmp_path, tiny_mnist):
    _write_folder(tmp_path, tiny_mnist, classes=(0, 1))
    (tmp_path / "class_0" / ".broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "class_0" / ".cache").mkdir()
    (tmp_path / "class_0" / ".cache" / "junk.png").write_bytes(b"junk")
    _write_folder(tmp_path / ".ipynb_checkpoints", tiny_mnist, classes=(2,))
    ds = load_image_folder(tmp_path)
    assert ds.classes == ["class_0", "class_1"] and ds.class_counts() == [4, 4]
    shutil.rmtree(tmp_path / "class_1")
    with pytest.raises(DataError, match="found 1 class folder"):  # the hidden folder does not count as a class
        load_image_folder(tmp_path)
