"""Image data: IDX files, Fashion-MNIST, ImageFolder layout, augmentation."""

import pytest
import torch
from image_helpers import write_fashion, write_idx

from tokendyn.data.images import (
    FASHION_MNIST_DIR,
    ImageTransform,
    load_fashion_mnist,
    load_image_folder,
    load_images,
    random_crop,
    random_flip,
    read_idx,
)
from tokendyn.errors import DataError


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("type_byte,dtype", [(0x08, torch.uint8), (0x0B, torch.int16), (0x0C, torch.int32)])
def test_idx_round_trip(tmp_path, compress, type_byte, dtype):
    t = torch.arange(-30 if dtype != torch.uint8 else 0, 30).to(dtype).reshape(-1, 3, 2) * 3
    write_idx(tmp_path / "a.idx", t, type_byte, compress)
    got = read_idx(tmp_path / "a.idx")
    assert got.dtype == dtype and torch.equal(got, t)


def test_idx_wrong_size_and_magic(tmp_path):
    t = torch.zeros(4, 5, dtype=torch.uint8)
    write_idx(tmp_path / "long", t, extra=b"\x00\x01")
    with pytest.raises(DataError, match="bytes of data but its header"):
        read_idx(tmp_path / "long")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_a_user_directory(tmp_path, compress):
    test_imgs, test_labels = write_fashion(tmp_path, compress=compress)
    ds = load_fashion_mnist(tmp_path)
    assert ds.image_shape == (1, 28, 28) and ds.n_classes == 10
    assert len(ds.train) == 12 and len(ds.test) == 5
    assert torch.equal(ds.test.images[:, 0], test_imgs) and torch.equal(ds.test.labels, test_labels.long())
    train, val = ds.split_validation(0.25, seed=0)
    assert len(train) == 9 and len(val) == 3
    assert sorted(torch.cat([train.labels, val.labels]).tolist()) == sorted(ds.train.labels.tolist())


def test_fashion_mnist_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="no Fashion-MNIST IDX files"):
        load_fashion_mnist(tmp_path)
    write_fashion(tmp_path, label_max=10)
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.zeros(3, dtype=torch.uint8), compress=True)
    with pytest.raises(DataError, match="12 images but"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    ds = load_fashion_mnist()
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.image_shape == (1, 28, 28)
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert 0.25 < ds.mean[0] < 0.35 and 0.3 < ds.std[0] < 0.4   # the known statistics (0.286, 0.353)


def _write_png(path, size, color, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_flat_layout(tmp_path):
    for i in range(5):
        _write_png(tmp_path / "cat" / f"{i}.png", (20 + i, 12), (200, 10, 10))
        _write_png(tmp_path / "dog" / "sub" / f"{i}.jpg", (9, 30), 40, mode="L")
    ds = load_image_folder(tmp_path, size=8, channels=3, test_fraction=0.2)
    assert ds.classes == ["cat", "dog"] and ds.image_shape == (3, 8, 8)
    assert len(ds.train) == 8 and len(ds.test) == 2
    both = torch.cat([ds.train.images, ds.test.images])
    labels = torch.cat([ds.train.labels, ds.test.labels])
    assert (both[labels == 0][:, 0] == 200).all() and (both[labels == 1] == 40).all()
    gray = load_image_folder(tmp_path, size=6, channels=1)
    assert gray.image_shape == (1, 6, 6)


def test_image_folder_train_val_layout(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b", "c"):
            for i in range(n):
                _write_png(tmp_path / split / c / f"{i}.png", (10, 10), (i * 50, 0, 0))
    ds = load_images("folder", tmp_path, size=4)
    assert ds.classes == ["a", "b", "c"] and len(ds.train) == 9 and len(ds.test) == 6
    assert ds.test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folder_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class folders"):
        load_image_folder(tmp_path)
    _write_png(tmp_path / "one" / "only" / "0.png", (6, 6), (1, 2, 3))
    with pytest.raises(DataError, match="has one class folder \\(only\\); classification needs at least two"):
        load_image_folder(tmp_path / "one")
    for f in (tmp_path / "one" / "only").iterdir():
        f.unlink()
    (tmp_path / "one" / "only").rmdir()
    (tmp_path / "one").rmdir()
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls2").mkdir()
    (tmp_path / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "cls" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png cannot be read"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="unknown image data set"):
        load_images("imagenet-21k")


def test_random_crop_matches_a_loop():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 255, (6, 2, 5, 7), generator=g, dtype=torch.uint8)
    assert torch.equal(random_crop(x, 0), x)
    out = random_crop(x, 2, torch.Generator().manual_seed(4))
    off = torch.randint(0, 5, (2, 6), generator=torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        r, c = int(off[0, i]), int(off[1, i])
        assert torch.equal(out[i], padded[i, :, r:r + 5, c:c + 7])
    flipped = random_flip(x, torch.Generator().manual_seed(5))
    for i in range(6):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_transform_normalises():
    x = torch.full((2, 1, 3, 3), 51, dtype=torch.uint8)
    t = ImageTransform(mean=[0.1], std=[0.5])
    torch.testing.assert_close(t(x), torch.full((2, 1, 3, 3), (0.2 - 0.1) / 0.5))
    assert t(x, augment=True).shape == x.shape
    torch.testing.assert_close(ImageTransform([0.1], [0.5], normalize=False)(x), torch.full((2, 1, 3, 3), 0.2))


def test_fashion_mnist_is_named_by_content_not_by_folder(tmp_path):
    """The label is part of a run's identity: copies in two folders, one gzipped, name the same
    data; one changed label names other data."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    write_fashion(tmp_path / "a", compress=True)
    write_fashion(tmp_path / "b", compress=False)
    write_fashion(tmp_path / "c", compress=False)
    labels = read_idx(tmp_path / "c" / "t10k-labels-idx1-ubyte").clone()
    labels[1] = (labels[1] + 1) % 10
    write_idx(tmp_path / "c" / "t10k-labels-idx1-ubyte", labels)
    a, b, c = (load_fashion_mnist(tmp_path / d).source for d in "abc")
    assert a == b and a != c
    assert str(tmp_path) not in a and a.startswith("Fashion-MNIST (12 training and 5 test images, sha256 ")
