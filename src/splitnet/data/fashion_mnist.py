"""Fashion-MNIST from its four original IDX ``.gz`` files.

The default directory is where Debian's ``dataset-fashion-mnist`` package installs them
(``apt-get install dataset-fashion-mnist``), so the data is available offline. A directory laid
out by ``torchvision.datasets.FashionMNIST`` (``<root>/FashionMNIST/raw/``) is accepted as
well; with ``download=True`` and no files present, torchvision downloads them there.

IDX format: a big-endian header ``0x00 0x00 <type> <ndim>`` (type 0x08 = uint8), then one
big-endian uint32 per dimension, then the raw values. Images are ``N x 28 x 28``
(magic 0x00000803), labels ``N`` (magic 0x00000801).

Fashion-MNIST has no official class hierarchy. We use three superclasses by garment kind;
the classes most often confused (T-shirt/top, Pullover, Coat, Shirt) all fall in "tops":

* tops: T-shirt/top, Pullover, Dress, Coat, Shirt
* footwear: Sandal, Sneaker, Ankle boot
* other: Trouser, Bag
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from splitnet.data.errors import DataError
from splitnet.data.source import ImageSet, SourceData
from splitnet.io import path_problem

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES: dict[str, tuple[str, str]] = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SUPERCLASS_NAMES = ["tops", "footwear", "other"]
SUPERCLASS = [0, 2, 0, 0, 0, 1, 0, 1, 2, 1]  # indexed by class label
SIDE = 28
_IMAGE_MAGIC = 0x0803  # uint8, 3 dimensions
_LABEL_MAGIC = 0x0801  # uint8, 1 dimension
_HINT = "the file is corrupt or not Fashion-MNIST - reinstall dataset-fashion-mnist or re-download it"


def _all_files() -> list[str]:
    return [name for pair in FILES.values() for name in pair]


def locate_fashion_mnist(root: Path, download: bool = False) -> Path:
    """The directory holding all four IDX files, downloading them with torchvision if allowed."""
    candidates = [root, root / "FashionMNIST" / "raw"]
    for directory in candidates:
        if all((directory / name).is_file() for name in _all_files()):
            return directory
    if download:
        from torchvision.datasets import FashionMNIST  # slow import, needed only to download

        FashionMNIST(str(root), train=True, download=True)
        return candidates[1]
    if root.is_dir():
        missing = [name for name in _all_files() if not (root / name).is_file()]
        problem = f"{root} lacks {', '.join(missing)}"
    elif root.exists():
        problem = f"{root} is a file, not a directory"
    else:  # a symlink loop or a file on the way is not "does not exist"
        unreachable = path_problem(root)
        problem = f"{root}: {unreachable}" if unreachable else f"directory {root} does not exist"
    raise DataError(
        f"Fashion-MNIST not found: {problem}; install it with "
        f"`apt-get install dataset-fashion-mnist` (files go to {DEFAULT_ROOT}/), set data.root to a "
        "directory holding the four IDX .gz files, or set data.download: true"
    )


def _decompress(path: Path) -> tuple[bytes, str]:
    """Decompressed content of a ``.gz`` file and the MD5 of the compressed file."""
    packed = path.read_bytes()
    try:
        content = gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a valid gzip file ({exc}); {_HINT}") from exc
    return content, hashlib.md5(packed, usedforsecurity=False).hexdigest()


def read_idx(path: Path, content: bytes, magic: int) -> np.ndarray:
    """Parse IDX ``content`` (from ``path``, for messages) whose header must carry ``magic``."""
    if len(content) < 4:
        raise DataError(f"{path}: too short for an IDX header; {_HINT}")
    (got,) = struct.unpack(">I", content[:4])
    if got != magic:
        raise DataError(f"{path}: bad IDX magic number 0x{got:08x}, expected 0x{magic:08x}; {_HINT}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{path}: IDX header truncated; {_HINT}")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    expected = int(np.prod(shape))
    if len(content) - header != expected:
        raise DataError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes) but holds "
            f"{len(content) - header} bytes; {_HINT}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def _read_split(directory: Path, split: str, inputs: dict[str, str]) -> ImageSet:
    """One split's images (N x 1 x 28 x 28) and labels, recording input MD5s in ``inputs``."""
    image_path, label_path = (directory / name for name in FILES[split])
    image_bytes, inputs[str(image_path)] = _decompress(image_path)
    label_bytes, inputs[str(label_path)] = _decompress(label_path)
    images = read_idx(image_path, image_bytes, _IMAGE_MAGIC)
    labels = read_idx(label_path, label_bytes, _LABEL_MAGIC)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{image_path}: images are {images.shape[1:]}, expected {SIDE}x{SIDE}; {_HINT}")
    if len(labels) != len(images):
        raise DataError(f"{label_path}: {len(labels)} labels for {len(images)} images in {image_path}; {_HINT}")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"{label_path}: label {int(labels.max())} out of range 0..{len(CLASS_NAMES) - 1}; {_HINT}")
    return ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def load_fashion_mnist(root: str | os.PathLike[str] = DEFAULT_ROOT, *, download: bool = False) -> SourceData:
    """Load Fashion-MNIST train (60k) and test (10k) with the superclass map of the module doc."""
    directory = locate_fashion_mnist(Path(root).expanduser(), download)
    inputs: dict[str, str] = {}
    return SourceData(
        train=_read_split(directory, "train", inputs),
        test=_read_split(directory, "test", inputs),
        class_names=list(CLASS_NAMES),
        superclass=torch.tensor(SUPERCLASS, dtype=torch.int64),
        superclass_names=list(SUPERCLASS_NAMES),
        inputs=inputs,
    )
