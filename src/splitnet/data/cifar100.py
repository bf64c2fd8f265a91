"""CIFAR-100 (python pickle version) through ``torchvision.datasets.CIFAR100``.

``root`` may be any of:

* a directory holding the extracted ``cifar-100-python/`` folder,
* the ``cifar-100-python/`` folder itself,
* a directory holding the archive ``cifar-100-python.tar.gz``, or the archive path itself:
  the archive's MD5 is checked, then it is extracted next to itself (torchvision's
  ``download=False`` never extracts, so we do it with torchvision's own safe extractor),
* with ``download=True``, an empty or missing directory: torchvision downloads and extracts.

Security: the three files ``train``, ``test`` and ``meta`` are pickles, and unpickling an
untrusted file runs arbitrary code. All three are read into memory and their MD5 compared with
the expected checksums *before* anything is unpickled. torchvision then loads the same files
through its own code path, which re-checks ``train``/``test`` in ``__init__`` and ``meta`` in
``_load_meta`` (read in torchvision 0.29's ``cifar.py``) against the same checksums, handed to
it as class attributes of a subclass. The checksums default to the official ones and can be
overridden per file name (tests use small synthetic files in the official format).

torchvision keeps only the fine labels, so the coarse labels and superclass names are taken
from our own verified reads of the same files.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torchvision costs ~1.5 s to import; only CIFAR runs need it
    from torchvision.datasets import CIFAR100

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


def _torchvision_class(md5: Mapping[str, str]) -> type[CIFAR100]:
    """``CIFAR100`` whose integrity checks use ``md5`` instead of the hard-coded official sums."""
    from torchvision.datasets import CIFAR100

    return type(
        "VerifiedCIFAR100",
        (CIFAR100,),
        {
            "tgz_md5": md5[ARCHIVE],
            "train_list": [["train", md5["train"]]],
            "test_list": [["test", md5["test"]]],
            "meta": {**CIFAR100.meta, "md5": md5["meta"]},
        },
    )


def _as_image_set(dataset: CIFAR100) -> ImageSet:
    """torchvision's HWC numpy images as an NCHW uint8 tensor plus int64 labels."""
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
    return ImageSet(images, torch.tensor(dataset.targets, dtype=torch.int64))


def _superclass_map(fine: torch.Tensor, coarse: torch.Tensor, num_classes: int, where: Path) -> torch.Tensor:
    """Fine class -> coarse class, checking that every fine class has exactly one coarse label."""
    if fine.shape != coarse.shape:
        raise DataError(f"{where}: {fine.numel()} fine labels but {coarse.numel()} coarse labels")
    pairs = torch.unique(torch.stack([fine, coarse], dim=1), dim=0)
    if pairs.shape[0] != num_classes or not torch.equal(pairs[:, 0], torch.arange(num_classes)):
        raise DataError(f"{where}: every fine class must occur with exactly one coarse label")
    return pairs[:, 1].clone()


def _read_coarse(folder: Path, md5: Mapping[str, str]) -> tuple[list[int], list[int], list[str]]:
    """Coarse labels of train and test and the superclass names, from our own verified reads.

    All three pickles are verified before any is unpickled; only the small label lists are kept.
    """
    blobs = {name: _read_verified(folder / name, md5[name]) for name in PICKLES}
    raw: dict[str, dict[str, Any]] = {
        name: pickle.loads(blob, encoding="latin1") for name, blob in blobs.items()  # noqa: S301 - verified
    }
    return raw["train"]["coarse_labels"], raw["test"]["coarse_labels"], list(raw["meta"]["coarse_label_names"])


def load_cifar100(
    root: str | os.PathLike[str], *, md5: Mapping[str, str] | None = None, download: bool = False
) -> SourceData:
    """Load CIFAR-100 train (50k) and test (10k) with fine and coarse labels; see the module doc."""
    sums = expected_md5(md5)
    base = locate_cifar100(Path(root).expanduser(), sums, download)
    folder = base / FOLDER
    train_coarse, test_coarse, superclass_names = _read_coarse(folder, sums)
    dataset = _torchvision_class(sums)
    train = _as_image_set(dataset(str(base), train=True))
    test_set = dataset(str(base), train=False)
    test = _as_image_set(test_set)
    class_names = list(test_set.classes)
    superclass = _superclass_map(
        torch.cat([train.labels, test.labels]),
        torch.tensor(train_coarse + test_coarse, dtype=torch.int64),
        len(class_names),
        folder,
    )
    return SourceData(
        train=train,
        test=test,
        class_names=class_names,
        superclass=superclass,
        superclass_names=superclass_names,
        inputs={str(folder / name): sums[name] for name in PICKLES},
    )
