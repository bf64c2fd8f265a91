"""A small synthetic dataset with a planted two-level class hierarchy, in CIFAR-100's on-disk format.

Tests and smoke runs need labelled colour images whose true superclass structure is known,
and they should exercise the real CIFAR-100 loader. This module writes
``<root>/cifar-100-python/{train,test,meta}`` exactly as the official files are laid out, plus
``<root>/planted-md5.json`` with the MD5 of each file (pass it as ``data.md5``).

How the hierarchy is planted. Every image is a coloured sinusoidal grating with a disc of
inverted colour on it:

* a *superclass* fixes the base colour, the grating orientation (superclasses are spread
  evenly over 0..pi) and frequency, and the disc radius;
* a *class* shifts its superclass's orientation, frequency and colour by a smaller amount,
  so classes of one superclass look alike but remain separable;
* every *image* gets a random grating phase, a small orientation jitter, a random contrast,
  the disc at a random position, and Gaussian pixel noise.

A classifier therefore confuses classes mostly within their superclass, which is what a
learned grouping should rediscover. Two knobs make the task harder without changing its
structure: ``class_offset`` scales the class offsets within a superclass (smaller = classes of a
superclass closer together) and ``pixel_noise`` is the standard deviation of the pixel noise
(intensity 0..1). Their defaults (1.0, 0.06) write the original dataset byte for byte. Fine
label ids are shuffled so that the members of a superclass are not contiguous (real CIFAR-100 ids are alphabetical, not grouped).

File format (as in the official python version): each file is a protocol-2 pickle of a dict
whose keys and strings are Python 2 ``str`` objects, so they load as ``str`` with
``encoding="latin1"`` (torchvision) and as ``bytes`` with ``encoding="bytes"``. ``train`` and
``test`` hold ``data`` (uint8 ``N x 3072``, each row the channel-major 3x32x32 image),
``fine_labels``, ``coarse_labels`` (lists of int), ``filenames`` and ``batch_label``; ``meta``
holds ``fine_label_names`` and ``coarse_label_names``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from splitnet.data.cifar100 import FOLDER
from splitnet.io import atomic_write_bytes, atomic_write_json

SIDE = 32
MD5_FILE = "planted-md5.json"


class _Py2StrPickler(pickle._Pickler):
    """Pickler that writes ``bytes`` with Python 2's ``str`` opcodes, as in the official files.

    The C pickler offers no hook for ``bytes`` (``reducer_override`` skips them), hence the
    pure-Python one.
    """

    dispatch = pickle._Pickler.dispatch.copy()
    # pickle._Pickler has these; typeshed omits them
    write: Callable[[bytes], None]
    memoize: Callable[[Any], None]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str  # type: ignore[assignment]  # typeshed types the handlers' self as Unpickler


def _py2_pickle(obj: Any) -> bytes:
    """Protocol-2 pickle of ``obj`` with ``bytes`` stored as Python 2 ``str``."""
    buffer = io.BytesIO()
    _Py2StrPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _prototypes(rng: np.random.Generator, supers: int, per_super: int, class_offset: float) -> dict[str, np.ndarray]:
    """Per-class colour (C x 3), orientation, frequency and disc radius (C), superclass-major order."""
    spread = np.linspace(-1.0, 1.0, per_super) if per_super > 1 else np.zeros(1)
    angle_step = np.pi / supers
    super_angle = (np.arange(supers) + rng.uniform(-0.15, 0.15, supers)) * angle_step
    super_freq = rng.uniform(2.0, 5.0, supers)
    super_colour = rng.uniform(0.15, 0.85, (supers, 3))
    super_radius = rng.uniform(3.0, 7.0, supers)
    # Class offsets: a third of the gap to the next superclass in orientation, plus colour and
    # frequency nudges in a random direction per class.
    angle = super_angle[:, None] + class_offset * 0.33 * angle_step * rng.permutation(spread)[None, :]
    freq = super_freq[:, None] * (1.0 + class_offset * 0.25 * rng.permutation(spread)[None, :])
    colour = super_colour[:, None, :] + class_offset * rng.normal(0.0, 0.08, (supers, per_super, 3))
    return {
        "angle": angle.reshape(-1),
        "freq": freq.reshape(-1),
        "colour": np.clip(colour, 0.05, 0.95).reshape(-1, 3),
        "radius": np.repeat(super_radius, per_super),
    }


def _render(rng: np.random.Generator, proto: dict[str, np.ndarray], cls: np.ndarray, pixel_noise: float) -> np.ndarray:
    """uint8 images (N x 3 x 32 x 32) for the class indices ``cls`` (superclass-major order)."""
    n = len(cls)
    f32 = np.float32  # float32 throughout: half the memory traffic of float64, ample precision
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(f32)
    angle = (proto["angle"][cls] + rng.normal(0.0, 0.03, n)).astype(f32)[:, None, None]
    freq = proto["freq"][cls].astype(f32)[:, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, n).astype(f32)[:, None, None]
    contrast = rng.uniform(0.6, 1.0, n).astype(f32)[:, None, None]
    wave = np.sin((2 * np.pi / SIDE) * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    shade = 0.35 + 0.65 * contrast * (0.5 + 0.5 * wave)  # N x H x W
    img = proto["colour"][cls].astype(f32)[:, :, None, None] * shade[:, None]
    radius = proto["radius"][cls].astype(f32)
    cx, cy = (rng.uniform(radius, SIDE - 1 - radius).astype(f32)[:, None, None] for _ in range(2))
    disc = (x - cx) ** 2 + (y - cy) ** 2 <= radius[:, None, None] ** 2
    img = np.where(disc[:, None], 1.0 - img, img)
    img += f32(pixel_noise) * rng.standard_normal(img.shape, dtype=f32)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _batch(
    rng: np.random.Generator,
    proto: dict[str, np.ndarray],
    fine_id: np.ndarray,
    per_super: int,
    per_class: int,
    label: str,
    pixel_noise: float,
) -> dict[bytes, Any]:
    """One shuffled split in the official dict layout; ``fine_id`` maps class index -> fine label."""
    num_classes = len(fine_id)
    cls = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    data = _render(rng, proto, cls, pixel_noise).reshape(len(cls), -1)
    fine = fine_id[cls]
    return {
        b"filenames": [f"planted_{f:03d}_{i:05d}.png".encode() for i, f in enumerate(fine)],
        b"batch_label": label.encode(),
        b"fine_labels": [int(f) for f in fine],
        b"coarse_labels": [int(c) // per_super for c in cls],
        b"data": data,
    }


def write_planted_cifar(
    root: str | os.PathLike[str],
    *,
    num_superclasses: int = 4,
    classes_per_superclass: int = 3,
    train_per_class: int = 50,
    test_per_class: int = 10,
    seed: int = 0,
    class_offset: float = 1.0,
    pixel_noise: float = 0.06,
) -> dict[str, str]:
    """Write the planted dataset under ``root`` and return ``{"train"|"test"|"meta": md5}``.

    Deterministic: the same arguments give byte-identical files.
    """
    if min(num_superclasses, classes_per_superclass, train_per_class, test_per_class) < 1:
        raise ValueError("all planted dataset sizes must be >= 1")
    if class_offset <= 0 or pixel_noise < 0:
        raise ValueError("planted class_offset must be > 0 and pixel_noise >= 0")
    rng = np.random.default_rng(seed)
    num_classes = num_superclasses * classes_per_superclass
    proto = _prototypes(rng, num_superclasses, classes_per_superclass, class_offset)
    fine_id = rng.permutation(num_classes)  # superclass-major class index -> shuffled fine label
    names = [b""] * num_classes
    for index, fid in enumerate(fine_id):
        names[fid] = f"s{index // classes_per_superclass}_c{index % classes_per_superclass}".encode()
    files = {
        "train": _batch(
            rng, proto, fine_id, classes_per_superclass, train_per_class, "training batch 1 of 1", pixel_noise
        ),
        "test": _batch(
            rng, proto, fine_id, classes_per_superclass, test_per_class, "testing batch 1 of 1", pixel_noise
        ),
        "meta": {
            b"fine_label_names": names,
            b"coarse_label_names": [f"super{s}".encode() for s in range(num_superclasses)],
        },
    }
    md5: dict[str, str] = {}
    for name, content in files.items():
        blob = _py2_pickle(content)
        atomic_write_bytes(Path(root) / FOLDER / name, blob)
        md5[name] = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    atomic_write_json(Path(root) / MD5_FILE, md5)
    return md5
