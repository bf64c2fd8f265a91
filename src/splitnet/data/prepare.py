"""Pipeline stage ``prepare-data``: raw image source -> ``train.pt``, ``val.pt``, ``test.pt`` + manifest.

Configuration (``cfg``, the ``data`` section of a run configuration). Unknown keys are an error.

``source`` (required)
    ``"cifar100"`` (official python pickles, 100 classes in 20 superclasses) or
    ``"fashion_mnist"`` (IDX files, 10 classes in 3 superclasses, see ``fashion_mnist.py``) or
    ``"planted"`` (a planted class hierarchy that ``planted.py`` writes into ``root`` in
    CIFAR-100's format and that is then read back through the CIFAR-100 loader).
``root`` (default: ``data/cifar100``, ``/usr/share/datasets/fashion-mnist`` resp. ``data/planted``)
    Where the raw files are. For CIFAR-100 a directory holding ``cifar-100-python/`` or
    ``cifar-100-python.tar.gz``, or the archive itself; for Fashion-MNIST the directory holding
    the four ``*-ubyte.gz`` files.
``download`` (default ``false``)
    Let torchvision download missing raw files into ``root`` (needs network access).
``md5`` (CIFAR-100 only, default: the official checksums)
    Mapping file name (``train``, ``test``, ``meta``, ``cifar-100-python.tar.gz``) -> expected
    MD5, for datasets in the CIFAR-100 format that are not the official one.
``planted`` (source planted only, required there)
    The generator's arguments: ``superclasses``, ``classes_per_superclass``, ``train_per_class``,
    ``test_per_class`` (images written per class) and ``seed``; optionally the difficulty knobs
    ``class_offset`` (default 1.0) and ``pixel_noise`` (default 0.06), see ``planted.py``.
``val_size`` (default 5000)
    Number of train images held out as validation, chosen at random (seeded, not stratified).
    5000 of 50,000 is the official SplitNet protocol for CIFAR-100; Fashion-MNIST uses the
    same default.
``train_per_class``, ``val_per_class``, ``test_per_class`` (default ``null`` = all)
    Keep only this many randomly chosen (seeded) images of every class in that split.
``resize`` (default ``null`` = keep the native size)
    Side length to shrink images to, by area averaging rounded back to uint8.
``seed`` (default 0)
    Seed of every random choice above; the same ``cfg`` and raw data give identical outputs.

Output directory:

``train.pt``, ``val.pt``, ``test.pt``
    ``torch.save`` of a dict, loadable with ``torch.load(path, weights_only=True)`` (what
    :func:`load_split` does, through :func:`splitnet.io.load_torch_file`):
    ``images`` uint8 ``N x C x H x W``, ``labels`` int64 ``N``, ``class_names`` list[str],
    ``superclass`` int64 ``num_classes`` (class -> superclass), ``superclass_names`` list[str].
``manifest.json``
    Source, root, resolved settings, per-split counts and per-class counts, the SHA-256 of every
    output file and the MD5 of every input file. It is written last and deleted before any
    output is rewritten, so a directory without it is incomplete. :func:`load_split` refuses a
    split whose hash does not match it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from splitnet.data import fashion_mnist
from splitnet.data.cifar100 import load_cifar100
from splitnet.data.errors import DataError
from splitnet.data.planted import write_planted_cifar
from splitnet.data.resize import resize_area
from splitnet.data.source import ImageSet, SourceData
from splitnet.data.subsets import generator, hold_out, per_class
from splitnet.io import atomic_torch_save, atomic_write_json, load_torch_file, sha256_file

SOURCES = ("cifar100", "fashion_mnist", "planted")
DEFAULT_ROOTS = {
    "cifar100": Path("data/cifar100"),
    "fashion_mnist": fashion_mnist.DEFAULT_ROOT,
    "planted": Path("data/planted"),
}
PLANTED_KEYS = ("superclasses", "classes_per_superclass", "train_per_class", "test_per_class", "seed")
PLANTED_DIFFICULTY = ("class_offset", "pixel_noise")  # optional; the generator's defaults otherwise
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_RERUN = "re-run `splitnet prepare-data`"


@dataclass(frozen=True)
class DataSettings:
    """A validated ``data`` configuration with every default filled in."""

    source: str
    root: Path
    download: bool = False
    md5: dict[str, str] | None = None
    planted: dict[str, float] | None = None
    val_size: int = 5000
    train_per_class: int | None = None
    val_per_class: int | None = None
    test_per_class: int | None = None
    resize: int | None = None
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings), as recorded in the manifest."""
        return {**asdict(self), "root": str(self.root)}


_KEYS = tuple(DataSettings.__dataclass_fields__)


def _check_int(key: str, value: Any, minimum: int, nullable: bool) -> None:
    """Raise a DataError naming ``key`` unless ``value`` is an integer >= ``minimum``."""
    # bool is a subclass of int, but ``val_size: true`` is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = "null or " if nullable else ""
        raise DataError(f"data.{key} must be {allowed}an integer >= {minimum}, got {value!r}")


def _int_setting(cfg: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    """``cfg[key]`` (or ``default``) checked to be an integer >= ``minimum``."""
    value = cfg.get(key, default)
    _check_int(key, value, minimum, nullable=False)
    return value


def _optional_int_setting(cfg: Mapping[str, Any], key: str, minimum: int) -> int | None:
    """``cfg[key]`` checked to be null (the default) or an integer >= ``minimum``."""
    value = cfg.get(key)
    if value is not None:
        _check_int(key, value, minimum, nullable=True)
    return value


def parse_config(cfg: Mapping[str, Any]) -> DataSettings:
    """Validate ``cfg`` (see the module docstring) and fill in defaults."""
    for key in cfg:
        if key not in _KEYS:
            raise DataError(f"data: unknown key {key!r}; known keys: {', '.join(_KEYS)}")
    source = cfg.get("source")
    if source not in SOURCES:
        raise DataError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}")
    download = cfg.get("download", False)
    if not isinstance(download, bool):
        raise DataError(f"data.download must be true or false, got {download!r}")
    md5 = cfg.get("md5")
    if md5 is not None and (source != "cifar100" or not isinstance(md5, Mapping)):
        raise DataError("data.md5 must be a mapping file name -> MD5 and applies only to source cifar100")
    planted = cfg.get("planted")
    if (planted is not None) != (source == "planted"):
        raise DataError("data.planted (the generator's arguments) is required for source planted and only read there")
    if planted is not None:
        if not isinstance(planted, Mapping) or not set(PLANTED_KEYS) <= set(planted) <= set(
            PLANTED_KEYS + PLANTED_DIFFICULTY
        ):
            raise DataError(
                f"data.planted must set {', '.join(PLANTED_KEYS)} (and optionally "
                f"{', '.join(PLANTED_DIFFICULTY)}), got {planted!r}"
            )
        for key in PLANTED_KEYS:
            _check_int(f"planted.{key}", planted[key], 0 if key == "seed" else 1, nullable=False)
        for key in PLANTED_DIFFICULTY:
            value = planted.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value > 10:
                raise DataError(f"data.planted.{key} must be a number in [0, 10], got {value!r}")
        if planted.get("class_offset", 1.0) == 0:
            raise DataError(
                "data.planted.class_offset must be > 0 (0 would make the classes of a superclass identical)"
            )
    root = cfg.get("root") or DEFAULT_ROOTS[source]
    if not isinstance(root, (str, os.PathLike)):
        raise DataError(f"data.root must be a path, got {root!r}")
    return DataSettings(
        source=source,
        root=Path(root).expanduser().absolute(),
        download=download,
        md5=None if md5 is None else {str(k): str(v) for k, v in md5.items()},
        planted=None if planted is None else {k: planted[k] for k in PLANTED_KEYS + PLANTED_DIFFICULTY if k in planted},
        val_size=_int_setting(cfg, "val_size", 5000, 0),
        train_per_class=_optional_int_setting(cfg, "train_per_class", 1),
        val_per_class=_optional_int_setting(cfg, "val_per_class", 1),
        test_per_class=_optional_int_setting(cfg, "test_per_class", 1),
        resize=_optional_int_setting(cfg, "resize", 1),
        seed=_int_setting(cfg, "seed", 0, 0),
    )


def _load_source(settings: DataSettings) -> SourceData:
    if settings.source == "cifar100":
        return load_cifar100(settings.root, md5=settings.md5, download=settings.download)
    if settings.source == "planted":
        p = settings.planted or {}
        md5 = write_planted_cifar(
            settings.root,
            num_superclasses=int(p["superclasses"]),
            classes_per_superclass=int(p["classes_per_superclass"]),
            train_per_class=int(p["train_per_class"]),
            test_per_class=int(p["test_per_class"]),
            seed=int(p["seed"]),
            **{key: float(p[key]) for key in PLANTED_DIFFICULTY if key in p},
        )
        return load_cifar100(settings.root, md5=md5)
    return fashion_mnist.load_fashion_mnist(settings.root, download=settings.download)


def _select(data: SourceData, settings: DataSettings) -> dict[str, ImageSet]:
    """Hold out validation images, apply the per-class limits and the resize."""
    kept, held = hold_out(len(data.train), settings.val_size, generator(settings.seed, "val"))
    splits = {"train": data.train.subset(kept), "val": data.train.subset(held), "test": data.test}
    for name in SPLITS:
        limit = getattr(settings, f"{name}_per_class")
        if limit is not None:
            labels = splits[name].labels
            gen = generator(settings.seed, f"{name}_per_class")
            splits[name] = splits[name].subset(
                per_class(labels, data.num_classes, limit, gen, f"data.{name}_per_class")
            )
        if settings.resize is not None:
            splits[name] = ImageSet(resize_area(splits[name].images, settings.resize), splits[name].labels)
    return splits


def _write_split(path: Path, images: ImageSet, data: SourceData) -> str:
    """Save one split in the documented format; return its SHA-256."""
    atomic_torch_save(
        {
            "images": images.images.contiguous(),
            "labels": images.labels.contiguous(),
            "class_names": list(data.class_names),
            "superclass": data.superclass.clone(),
            "superclass_names": list(data.superclass_names),
        },
        path,
    )
    return sha256_file(path)


def prepare_data(cfg: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Load the configured source, write the three splits and the manifest; return the manifest."""
    settings = parse_config(cfg)
    data = _load_source(settings)
    splits = _select(data, settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # From here on the directory is incomplete until the new manifest is written.
    (out / MANIFEST).unlink(missing_ok=True)
    split_info: dict[str, Any] = {}
    for name, images in splits.items():
        sha = _write_split(out / f"{name}.pt", images, data)
        split_info[name] = {
            "file": f"{name}.pt",
            "sha256": sha,
            "count": len(images),
            "per_class": torch.bincount(images.labels, minlength=data.num_classes).tolist(),
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": settings.source,
        "root": str(settings.root),
        "settings": settings.to_json(),
        "image_shape": list(splits["train"].images.shape[1:]),
        "class_names": data.class_names,
        "superclass": data.superclass.tolist(),
        "superclass_names": data.superclass_names,
        "splits": split_info,
        "inputs": {path: {"md5": md5} for path, md5 in data.inputs.items()},
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory; a clear error if it is missing or unreadable."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing: the data was never prepared or its preparation did not finish; {_RERUN}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); {_RERUN}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path} is not a format-{FORMAT_VERSION} data manifest; {_RERUN}")
    return manifest


def load_split(out_dir: str | Path, split: str) -> dict[str, Any]:
    """Load ``train``, ``val`` or ``test`` after checking its SHA-256 against the manifest."""
    manifest = read_manifest(out_dir)
    entry = manifest.get("splits", {}).get(split)
    if entry is None:
        raise DataError(f"{Path(out_dir) / MANIFEST} has no split {split!r}; splits are {', '.join(SPLITS)}")
    path = Path(out_dir) / entry["file"]
    if not path.is_file():
        raise DataError(f"{path} is missing; {_RERUN}")
    blob = path.read_bytes()  # hash and load the same bytes
    got = hashlib.sha256(blob).hexdigest()
    if got != entry["sha256"]:
        raise DataError(
            f"{path} does not match its manifest (sha256 {got}, expected {entry['sha256']}): it was "
            f"modified after preparation; {_RERUN}"
        )
    try:
        return load_torch_file(path, blob, remedy=_RERUN)
    except ValueError as err:  # the data layer's one error type
        raise DataError(str(err)) from None
