"""CIFAR-100 (python pickle version), read from its MD5-verified pickles.

``root`` may be any of:

* a directory holding the extracted ``cifar-100-python/`` folder,
* the ``cifar-100-python/`` folder itself,
* a directory holding the archive ``cifar-100-python.tar.gz``, or the archive path itself:
  the archive's MD5 is checked, then it is extracted next to itself (torchvision's
  ``download=False`` never extracts, so we do it with torchvision's own safe extractor),
* with ``download=True``, an empty or missing directory: torchvision downloads and extracts.

Security: the three files ``train``, ``test`` and ``meta`` are pickles, and unpickling an
untrusted file runs arbitrary code. All three are read into memory and their MD5 compared with
the expected checksums *before* anything is unpickled, and the verified bytes are the ones
unpickled. The checksums default to the official ones and can be overridden per file name
(tests use small synthetic files in the official format). torchvision is used only to extract
the archive and to download it.

Keys: the official files are Python 2 pickles; read with ``encoding="latin1"`` (as here and in
torchvision) their keys and names are ``str``. A file re-saved from Python 3 after reading it
with ``encoding="bytes"`` (the recipe on the CIFAR page) has ``bytes`` keys and names (``b"data"``,
``b"fine_labels"``, ...). Both are accepted.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitnet.data.errors import DataError
from splitnet.data.source import ImageSet, SourceData
from splitnet.io import md5_file

FOLDER = "cifar-100-python"
ARCHIVE = "cifar-100-python.tar.gz"
PICKLES = ("train", "test", "meta")

# Published checksums (also torchvision's CIFAR100 class attributes; a test keeps them equal).
OFFICIAL_MD5: dict[str, str] = {
    ARCHIVE: "eb9058c3a382ffc7106e4002c42a8d85",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}


def expected_md5(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Official checksums with ``overrides`` (file name -> MD5) applied on top."""
    merged = dict(OFFICIAL_MD5)
    for name, digest in (overrides or {}).items():
        if name not in OFFICIAL_MD5:
            raise DataError(f"data.md5: unknown CIFAR-100 file {name!r}; known files: {sorted(OFFICIAL_MD5)}")
        merged[name] = str(digest).lower()
    return merged


_NOT_CIFAR = "the file is not in the CIFAR-100 python format - re-download the official archive"


def _md5_mismatch(path: Path, expected: str, got: str) -> DataError:
    return DataError(
        f"MD5 mismatch for {path}: expected {expected}, got {got}; the file is corrupt or not "
        "the official CIFAR-100 - re-download it (or set data.md5 for a custom dataset)"
    )


def _read_verified(path: Path, md5: str) -> bytes:
    """The bytes of ``path``, returned only if their MD5 is ``md5``.

    Hashing the very bytes that will be unpickled leaves no window in which the file could be
    swapped between the check and the use.
    """
    if not path.is_file():
        raise DataError(f"CIFAR-100 file {path} is missing; re-extract or re-download the official archive")
    blob = path.read_bytes()
    got = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    if got != md5:
        raise _md5_mismatch(path, md5, got)
    return blob


def _extract(archive: Path, md5: str) -> Path:
    """Check the archive's MD5, extract it next to itself, return the directory holding the folder.

    Extraction goes to a temporary directory first and is moved into place in one rename, so an
    interrupted extraction never leaves a half-filled ``cifar-100-python/``.
    """
    got = md5_file(archive)
    if got != md5:
        raise _md5_mismatch(archive, md5, got)
    base = archive.parent
    with tempfile.TemporaryDirectory(prefix=".cifar-extract-", dir=base) as tmp:
        from torchvision.datasets.utils import extract_archive

        extract_archive(str(archive), tmp)
        extracted = Path(tmp) / FOLDER
        if not extracted.is_dir():
            raise DataError(f"{archive} does not contain a {FOLDER}/ folder; it is not the CIFAR-100 python archive")
        os.replace(extracted, base / FOLDER)
    return base


def locate_cifar100(root: Path, md5: Mapping[str, str], download: bool = False) -> Path:
    """The directory that contains (or, after extraction or download, will contain) ``cifar-100-python/``."""
    if root.is_file():
        if root.name != ARCHIVE:
            raise DataError(f"data.root {root} is a file but not {ARCHIVE}; point it at the archive or its directory")
        return root.parent if (root.parent / FOLDER).is_dir() else _extract(root, md5[ARCHIVE])
    if root.name == FOLDER and (root / "train").exists():
        return root.parent
    if (root / FOLDER).is_dir():
        return root
    if (root / ARCHIVE).is_file():
        return _extract(root / ARCHIVE, md5[ARCHIVE])
    if download:
        root.mkdir(parents=True, exist_ok=True)
        from torchvision.datasets import CIFAR100
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(CIFAR100.url, str(root), filename=ARCHIVE, md5=md5[ARCHIVE])
        return root
    raise DataError(
        f"CIFAR-100 not found at {root}: expected {root / FOLDER}/ or {root / ARCHIVE}; "
        "put the official archive there, set data.root, or set data.download: true"
    )


def _text(value: Any) -> Any:
    """``bytes`` (a key or name written by Python 3) decoded as latin1; anything else unchanged."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _unpickle(path: Path, blob: bytes, keys: tuple[str, ...]) -> dict[str, Any]:
    """The verified pickle ``blob`` of ``path`` as a dict with ``str`` keys holding ``keys``."""
    try:
        raw = pickle.loads(blob, encoding="latin1")
    except Exception as exc:  # any unpickling failure means a file that is not CIFAR-100
        raise DataError(f"{path} is not a readable pickle ({exc}); {_NOT_CIFAR}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path} holds a {type(raw).__name__}, not a dict; {_NOT_CIFAR}")
    content = {_text(key): value for key, value in raw.items()}
    missing = [key for key in keys if key not in content]
    if missing:
        raise DataError(f"{path} lacks the key(s) {', '.join(missing)}; {_NOT_CIFAR}")
    return content


def _names(path: Path, meta: dict[str, Any], key: str) -> list[str]:
    names = meta[key]
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path}: {key} is not a non-empty list of names; {_NOT_CIFAR}")
    return [str(_text(name)) for name in names]


def _image_set(path: Path, batch: dict[str, Any], num_classes: int) -> tuple[ImageSet, torch.Tensor]:
    """Images (N x 3 x 32 x 32 uint8, from the channel-major rows), fine and coarse labels."""
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: data must be a uint8 array of shape N x 3072, got a {got}; {_NOT_CIFAR}")
    fine = torch.tensor(list(batch["fine_labels"]), dtype=torch.int64)
    coarse = torch.tensor(list(batch["coarse_labels"]), dtype=torch.int64)
    if fine.numel() != len(data) or coarse.numel() != len(data):
        raise DataError(
            f"{path}: {len(data)} images but {fine.numel()} fine and {coarse.numel()} coarse labels; {_NOT_CIFAR}"
        )
    if len(data) and not 0 <= int(fine.min()) <= int(fine.max()) < num_classes:
        raise DataError(
            f"{path}: fine labels must lie in 0..{num_classes - 1} (the meta file names "
            f"{num_classes} classes); {_NOT_CIFAR}"
        )
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(len(data), 3, 32, 32)))
    return ImageSet(images, fine), coarse


def _superclass_map(fine: torch.Tensor, coarse: torch.Tensor, num_classes: int, where: Path) -> torch.Tensor:
    """Fine class -> coarse class, checking that every fine class has exactly one coarse label."""
    if fine.shape != coarse.shape:
        raise DataError(f"{where}: {fine.numel()} fine labels but {coarse.numel()} coarse labels")
    pairs = torch.unique(torch.stack([fine, coarse], dim=1), dim=0)
    if pairs.shape[0] != num_classes or not torch.equal(pairs[:, 0], torch.arange(num_classes)):
        raise DataError(f"{where}: every fine class must occur with exactly one coarse label")
    return pairs[:, 1].clone()


def load_cifar100(
    root: str | os.PathLike[str], *, md5: Mapping[str, str] | None = None, download: bool = False
) -> SourceData:
    """Load CIFAR-100 train (50k) and test (10k) with fine and coarse labels; see the module doc."""
    sums = expected_md5(md5)
    folder = locate_cifar100(Path(root).expanduser(), sums, download) / FOLDER
    blobs = {name: _read_verified(folder / name, sums[name]) for name in PICKLES}  # all verified first
    meta = _unpickle(folder / "meta", blobs.pop("meta"), ("fine_label_names", "coarse_label_names"))
    class_names = _names(folder / "meta", meta, "fine_label_names")
    superclass_names = _names(folder / "meta", meta, "coarse_label_names")
    keys = ("data", "fine_labels", "coarse_labels")
    train, train_coarse = _image_set(
        folder / "train", _unpickle(folder / "train", blobs.pop("train"), keys), len(class_names)
    )
    test, test_coarse = _image_set(
        folder / "test", _unpickle(folder / "test", blobs.pop("test"), keys), len(class_names)
    )
    superclass = _superclass_map(
        torch.cat([train.labels, test.labels]), torch.cat([train_coarse, test_coarse]), len(class_names), folder
    )
    return SourceData(
        train=train,
        test=test,
        class_names=class_names,
        superclass=superclass,
        superclass_names=superclass_names,
        inputs={str(folder / name): sums[name] for name in PICKLES},
    )
