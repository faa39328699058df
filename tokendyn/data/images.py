"""Image data for the classifier: Fashion-MNIST and any ImageFolder-layout data set.

Images are held as uint8 tensors (N, C, H, W) with int64 labels (N,); :class:`ImageSplit`
turns a batch into float input (normalised, optionally augmented) on whatever device the
batch lives on, so a whole small data set can sit on a GPU and be batched there.

Sources:
- Fashion-MNIST from IDX files (``train-images-idx3-ubyte`` etc., plain or ``.gz``): the
  Debian package ``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist;
  a user directory holding the same four files works the same; without either, torchvision
  (when installed) downloads them.
- ImageFolder layout (ImageNet's): ``root/<class>/<image>``, or ``root/train/<class>/...``
  with ``root/val/`` or ``root/test/`` beside it. Every image is decoded with Pillow, its
  shorter side resized to ``size`` and the centre ``size`` × ``size`` cropped.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# IDX type byte -> (torch dtype, bytes per element); data are big-endian
_IDX_TYPES = {0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2),
              0x0C: (torch.int32, 4), 0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8)}


# ---- IDX files ----------------------------------------------------------------------------

def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (plain or gzip-compressed) into a tensor of the shape its header gives.

    Raises :class:`DataError` for a missing file, a bad magic number, or a data size that
    does not match the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path} ({exc}).") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number).")
    dtype, width = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    n = 1
    for d in shape:
        n *= d
    if len(raw) - header != n * width:
        raise DataError(f"IDX file {path} has {len(raw) - header} bytes of data but its header "
                        f"{tuple(shape)} needs {n * width}.")
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    if width > 1:   # big-endian on disk
        data = data.view(-1, width).flip(-1).contiguous().view(dtype)
    else:
        data = data.view(dtype)
    return data.reshape(shape).clone()


def find_idx(directory: Path, name: str) -> Path | None:
    """``directory/name`` or, failing that, ``directory/name.gz``; None when neither is a file."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


# ---- the data set objects -------------------------------------------------------------------

def check_labels(labels: torch.Tensor, n_classes: int, what: str) -> None:
    """Raise :class:`DataError` unless every label is an integer in [0, n_classes)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise DataError(f"{what} has labels outside 0..{n_classes - 1} "
                        f"(found {int(labels.min())}..{int(labels.max())}).")


@dataclass
class ImageSplit:
    """images: (N, C, H, W) uint8; labels: (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> ImageSplit:
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> ImageSplit:
        return ImageSplit(self.images[index], self.labels[index])


@dataclass
class ImageDataset:
    """A train and a test split with class names and a one-line description of the source."""

    train: ImageSplit
    test: ImageSplit
    classes: list[str]
    source: str
    mean: list[float] = field(default_factory=list)   # per channel, of the training images in [0, 1]
    std: list[float] = field(default_factory=list)

    def __post_init__(self):
        for name, split in (("training split", self.train), ("test split", self.test)):
            if split.images.dim() != 4 or split.images.dtype != torch.uint8:
                raise DataError(f"the {name} of {self.source} must hold uint8 images (N, C, H, W).")
            if split.images.shape[0] != split.labels.shape[0]:
                raise DataError(f"the {name} of {self.source} has {split.images.shape[0]} images "
                                f"but {split.labels.shape[0]} labels.")
            check_labels(split.labels, len(self.classes), f"the {name} of {self.source}")
        if len(self.train) == 0:
            raise DataError(f"{self.source} has no training images.")
        if not self.mean:
            x = self.train.images.float().div_(255)
            self.mean = x.mean(dim=(0, 2, 3)).tolist()
            self.std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.train.images.shape[1:])

    def split_validation(self, fraction: float, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
        """(train, validation): a seeded random ``fraction`` of the training split held out."""
        if not 0 < fraction < 1:
            raise DataError(f"the validation fraction must be in (0, 1), got {fraction}.")
        n = len(self.train)
        n_val = max(1, int(round(n * fraction)))
        if n_val >= n:
            raise DataError(f"{self.source} has too few training images ({n}) to hold out a validation set.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return self.train.subset(order[n_val:]), self.train.subset(order[:n_val])


# ---- batches: normalisation and augmentation --------------------------------------------------

def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None,
                offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Pad each side by ``padding`` zeros and crop back to (H, W) at a random offset per image.

    images: (N, C, H, W) any dtype -> (N, C, H, W). offsets: (2, N) row and column offsets in
    [0, 2·padding], or None to draw them on the CPU with ``generator``.
    """
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    if offsets is None:
        offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    off = offsets.to(images.device)
    rows = off[0][:, None] + torch.arange(h, device=images.device)            # (N, H)
    cols = off[1][:, None] + torch.arange(w, device=images.device)            # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None,
                flip: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (or where the bool (N,) ``flip`` says).
    images: (N, C, H, W)."""
    if flip is None:
        flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


@dataclass
class ImageTransform:
    """uint8 batch (N, C, H, W) -> float32 (N, C, H, W): optional augmentation, scaling to
    [0, 1], and per-channel normalisation (x − mean) / std when ``normalize``."""

    mean: list[float]
    std: list[float]
    normalize: bool = True
    crop_padding: int = 0
    flip: bool = False

    def draw(self, n: int, generator: torch.Generator | None = None) -> dict:
        """The random choices of augmenting n images: {"offsets": (2, n), "flip": (n,) bool}.
        Drawn for a whole batch and sliced, so any slicing of the batch augments alike."""
        return {"offsets": torch.randint(0, 2 * self.crop_padding + 1, (2, n), generator=generator),
                "flip": torch.rand(n, generator=generator) < 0.5}

    def __call__(self, images: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None,
                 draws: dict | None = None) -> torch.Tensor:
        if augment:
            draws = draws if draws is not None else self.draw(images.shape[0], generator)
            images = random_crop(images, self.crop_padding, offsets=draws["offsets"])
            if self.flip:
                images = random_flip(images, flip=draws["flip"])
        x = images.float().div_(255)
        if self.normalize:
            mean = torch.tensor(self.mean, device=x.device)[:, None, None]
            std = torch.tensor(self.std, device=x.device)[:, None, None]
            x = (x - mean) / std
        return x


# ---- Fashion-MNIST ----------------------------------------------------------------------------

def _read_split(directory: Path, split: str) -> ImageSplit | None:
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    img_path, lbl_path = find_idx(directory, img_name), find_idx(directory, lbl_name)
    if img_path is None or lbl_path is None:
        return None
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise DataError(f"{img_path} must hold uint8 images (N, H, W), got {images.dtype} {tuple(images.shape)}.")
    if labels.dim() != 1:
        raise DataError(f"{lbl_path} must hold one label per image, got shape {tuple(labels.shape)}.")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} labels.")
    labels = labels.long()
    check_labels(labels, len(FASHION_MNIST_CLASSES), str(lbl_path))
    return ImageSplit(images[:, None], labels)


def _torchvision_fashion_mnist(cache: Path) -> Path | None:
    """Download the IDX files with torchvision if it is installed; their directory, or None."""
    try:
        from torchvision.datasets import FashionMNIST  # optional dependency
    except ImportError:
        return None
    try:
        FashionMNIST(str(cache), train=True, download=True)
        FashionMNIST(str(cache), train=False, download=True)
    except Exception as exc:  # no network, or the mirror is down
        raise DataError(f"torchvision could not download Fashion-MNIST into {cache} ({exc}).") from exc
    return cache / "FashionMNIST" / "raw"


def load_fashion_mnist(root: str | Path | None = None, download: bool = False) -> ImageDataset:
    """Fashion-MNIST: 60,000 training and 10,000 test images, 1 × 28 × 28, 10 classes.

    root: a directory with the four IDX files (default: $TOKENDYN_FASHION_MNIST, else the Debian
    package's /usr/share/datasets/fashion-mnist). ``download``: when the files are not there,
    fetch them with torchvision into ``~/.cache/tokendyn`` (needs torchvision and a network).
    """
    if root is None:
        root = os.environ.get("TOKENDYN_FASHION_MNIST") or FASHION_MNIST_DIR
    directory = Path(root).expanduser()
    train = _read_split(directory, "train") if directory.is_dir() else None
    if train is None and download:
        fetched = _torchvision_fashion_mnist(Path("~/.cache/tokendyn").expanduser())
        if fetched is not None:
            directory = fetched
            train = _read_split(directory, "train")
    if train is None:
        raise DataError(f"no Fashion-MNIST IDX files in {directory}; install the Debian package "
                        "dataset-fashion-mnist, pass a directory holding train-images-idx3-ubyte[.gz] "
                        "and the other three files, or install torchvision and allow the download.")
    test = _read_split(directory, "test")
    if test is None:
        raise DataError(f"{directory} has the Fashion-MNIST training files but not the test files "
                        "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz].")
    return ImageDataset(train, test, list(FASHION_MNIST_CLASSES), fashion_mnist_label(train, test))


def fashion_mnist_label(train: ImageSplit, test: ImageSplit) -> str:
    """The data's name by content, not by where it was read: the sizes and a SHA-256 of the
    decoded images and labels (the same for .gz and plain files). It is part of a run's
    identity, so runs trained from copies in different folders or machines merge."""
    digest = hashlib.sha256()
    for split in (train, test):
        digest.update(split.images.contiguous().numpy().tobytes())
        digest.update(split.labels.contiguous().numpy().tobytes())
    return (f"Fashion-MNIST ({len(train.labels):,} training and {len(test.labels):,} test images, "
            f"sha256 {digest.hexdigest()[:16]})")


# ---- ImageFolder layout -----------------------------------------------------------------------

def _class_dirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def decode_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """One image file -> (channels, size, size) uint8: shorter side resized to ``size``
    (bilinear), centre crop. Raises :class:`DataError` naming an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            w, h = img.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"image file {path} cannot be read ({exc.__class__.__name__}: {exc}).") from exc
    return data.view(size, size, channels).permute(2, 0, 1).contiguous()


def _check_decoded_size(directories: list[Path], classes: list[str], size: int, channels: int) -> None:
    """Refuse, before decoding anything, a folder whose images at ``size`` × ``size`` would not
    fit in the memory free (each image is decoded, then the whole split stacked: twice)."""
    from ..resources import check_memory

    n = sum(len(_image_files(d / name)) for d in directories for name in classes if (d / name).is_dir())
    check_memory(2 * max(n, 1) * channels * size * size, "cpu",
                 f"--image-size {size} ({max(n, 1):,} images of {channels} channel(s))")


def _read_folder(directory: Path, classes: list[str], size: int, channels: int) -> ImageSplit:
    images, labels = [], []
    for label, name in enumerate(classes):
        class_dir = directory / name
        if not class_dir.is_dir():
            continue
        for path in _image_files(class_dir):
            images.append(decode_image(path, size, channels))
            labels.append(label)
    if not images:
        raise DataError(f"{directory} has no image files ({', '.join(IMAGE_SUFFIXES)}) in its class folders.")
    return ImageSplit(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def load_image_folder(root: str | Path, size: int = 32, channels: int = 3, test_fraction: float = 0.2,
                      seed: int = 0) -> ImageDataset:
    """An ImageFolder-layout data set, decoded into memory at ``size`` × ``size``.

    ``root/train/<class>/*`` with ``root/val/<class>/*`` (or ``test/``) uses those splits;
    ``root/<class>/*`` alone holds out a seeded ``test_fraction`` as the test split.
    Classes are the sorted folder names of the training split. Memory: N·channels·size² bytes
    (1.28 M ImageNet images at 64 × 64 RGB: 15.7 GB).
    """
    directory = Path(root).expanduser()
    if not directory.is_dir():
        raise DataError(f"image folder {directory} does not exist.")
    if size < 1 or channels not in (1, 3):
        raise DataError(f"need size >= 1 and channels 1 or 3, got size={size}, channels={channels}.")
    train_dir = directory / "train"
    test_dir = next((directory / n for n in ("val", "test") if (directory / n).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        classes = [p.name for p in _class_dirs(train_dir)]
        if not classes:
            raise DataError(f"{train_dir} has no class folders.")
        _need_two(classes, train_dir)
        extra = sorted({p.name for p in _class_dirs(test_dir)} - set(classes))
        if extra:
            raise DataError(f"{test_dir} has class folder(s) {', '.join(extra)} that {train_dir} lacks.")
        _check_decoded_size([train_dir, test_dir], classes, size, channels)
        train = _read_folder(train_dir, classes, size, channels)
        test = _read_folder(test_dir, classes, size, channels)
    else:
        classes = [p.name for p in _class_dirs(directory)]
        if not classes:
            raise DataError(f"{directory} has no class folders (expected root/<class>/<image> "
                            "or root/train/<class>/<image> with root/val/).")
        _need_two(classes, directory)
        _check_decoded_size([directory], classes, size, channels)
        everything = _read_folder(directory, classes, size, channels)
        if not 0 < test_fraction < 1:
            raise DataError(f"the test fraction must be in (0, 1), got {test_fraction}.")
        n = len(everything)
        n_test = max(1, int(round(n * test_fraction)))
        if n_test >= n:
            raise DataError(f"{directory} has too few images ({n}) to hold out a test split.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        train, test = everything.subset(order[n_test:]), everything.subset(order[:n_test])
    return ImageDataset(train, test, classes, f"image folder {directory} ({size}x{size}, {channels} channel(s))")


def _need_two(classes: list[str], where: Path) -> None:
    # one class is no classification: the model reaches loss 0 and accuracy 1 and learns nothing
    if len(classes) < 2:
        raise DataError(f"{where} has one class folder ({classes[0]}); classification needs at least two.")


def load_images(name: str, root: str | Path | None = None, size: int = 32, channels: int = 3,
                download: bool = False) -> ImageDataset:
    """By name: ``"fashion-mnist"`` (``root`` optional) or ``"folder"`` (``root`` required)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root, download=download)
    if name == "folder":
        if root is None:
            raise DataError("an image-folder data set needs its directory (--data-dir).")
        return load_image_folder(root, size=size, channels=channels)
    raise DataError(f"unknown image data set {name!r}; choose fashion-mnist or folder.")
