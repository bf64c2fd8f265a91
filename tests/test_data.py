"""Tests of the data layer: atomic I/O, CIFAR-100 and Fashion-MNIST loading, prepare-data."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR100

import splitnet.data.prepare
from splitnet.data import DataError, load_cifar100, load_split, prepare_data, write_planted_cifar
from splitnet.data.cifar100 import ARCHIVE, FOLDER, OFFICIAL_MD5
from splitnet.data.fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, FILES, SUPERCLASS_NAMES
from splitnet.data.planted import MD5_FILE
from splitnet.data.resize import resize_area
from splitnet.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    md5_file,
    sha256_file,
)

SUPERS, PER_SUPER, TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 3, 40, 10
NUM_CLASSES = SUPERS * PER_SUPER


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A planted CIFAR-format dataset shared (read-only) by the tests of this module."""
    root = tmp_path_factory.mktemp("planted")
    md5 = write_planted_cifar(
        root,
        num_superclasses=SUPERS,
        classes_per_superclass=PER_SUPER,
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
        seed=3,
    )
    return root, md5


def _cifar_cfg(root: Path, md5: dict[str, str], **extra: object) -> dict[str, object]:
    return {"source": "cifar100", "root": str(root), "md5": md5, "val_size": 60, "seed": 7, **extra}


def _row_keys(images: torch.Tensor) -> set[bytes]:
    """One hashable key per image, to compare splits as sets of images."""
    return {row.numpy().tobytes() for row in images.reshape(len(images), -1)}


# --- atomic writes and hashes -------------------------------------------------------------


def test_atomic_writes_roundtrip_and_leave_no_temp_files(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "t.txt", "h\u00e9")
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "m.pt")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "h\u00e9"
    assert (tmp_path / "j.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["x"], torch.arange(3))
    names = sorted(p.name for p in tmp_path.rglob("*"))
    assert names == ["a", "b.bin", "j.json", "m.pt", "t.txt"]


def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    atomic_write_bytes(target, b"old")
    with pytest.raises((AttributeError, pickle.PicklingError)):  # lambdas cannot be pickled
        atomic_torch_save({"f": lambda: None}, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_file_hashes(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # spans several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert md5_file(tmp_path / "f") == hashlib.md5(data).hexdigest()


# --- planted generator ----------------------------------------------------------------------


def test_official_checksums_match_torchvision() -> None:
    assert OFFICIAL_MD5[ARCHIVE] == CIFAR100.tgz_md5
    assert OFFICIAL_MD5["meta"] == CIFAR100.meta["md5"]
    assert {name: md5 for name, md5 in CIFAR100.train_list + CIFAR100.test_list} == {
        "train": OFFICIAL_MD5["train"],
        "test": OFFICIAL_MD5["test"],
    }


def test_planted_files_have_official_layout(planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    assert json.loads((root / MD5_FILE).read_text()) == md5
    assert md5 == {name: md5_file(root / FOLDER / name) for name in ("train", "test", "meta")}
    with open(root / FOLDER / "train", "rb") as f:
        as_bytes = pickle.load(f, encoding="bytes")  # like code written for the real files
    assert set(as_bytes) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    assert as_bytes[b"data"].dtype == np.uint8
    assert as_bytes[b"data"].shape == (NUM_CLASSES * TRAIN_PER_CLASS, 3072)
    assert isinstance(as_bytes[b"filenames"][0], bytes)
    with open(root / FOLDER / "meta", "rb") as f:
        as_str = pickle.load(f, encoding="latin1")  # like torchvision
    assert set(as_str) == {"fine_label_names", "coarse_label_names"}
    assert len(as_str["fine_label_names"]) == NUM_CLASSES


def test_planted_is_deterministic(tmp_path: Path, planted: tuple[Path, dict[str, str]]) -> None:
    kwargs = dict(num_superclasses=SUPERS, classes_per_superclass=PER_SUPER, train_per_class=TRAIN_PER_CLASS)
    same = write_planted_cifar(tmp_path / "a", test_per_class=TEST_PER_CLASS, seed=3, **kwargs)
    other = write_planted_cifar(tmp_path / "b", test_per_class=TEST_PER_CLASS, seed=4, **kwargs)
    assert same == planted[1]
    assert other["train"] != same["train"]


def test_planted_difficulty_knobs(tmp_path: Path, planted: tuple[Path, dict[str, str]]) -> None:
    """The defaults write the original files byte for byte; closer classes and more noise make the
    nearest-centroid classifier err, still mostly within the true superclass (planted_hard's premise)."""
    kwargs = dict(num_superclasses=SUPERS, classes_per_superclass=PER_SUPER, train_per_class=TRAIN_PER_CLASS)
    explicit = write_planted_cifar(
        tmp_path / "a", test_per_class=TEST_PER_CLASS, seed=3, class_offset=1.0, pixel_noise=0.06, **kwargs
    )
    assert explicit == planted[1]
    accuracy = {}
    for name, knobs in {"easy": {}, "hard": {"class_offset": 0.2, "pixel_noise": 0.15}}.items():
        md5 = write_planted_cifar(tmp_path / name, test_per_class=TEST_PER_CLASS, seed=3, **knobs, **kwargs)
        data = load_cifar100(tmp_path / name, md5=md5)
        train, test = _shift_invariant_features(data.train.images), _shift_invariant_features(data.test.images)
        centroids = torch.stack([train[data.train.labels == c].mean(0) for c in range(NUM_CLASSES)])
        predicted = torch.cdist(test, centroids).argmin(1)
        wrong = predicted != data.test.labels
        accuracy[name] = 1 - wrong.float().mean().item()
        if name == "hard":
            assert (data.superclass[predicted[wrong]] == data.superclass[data.test.labels[wrong]]).float().mean() > 0.8
    assert accuracy["hard"] < accuracy["easy"] - 0.1, accuracy
    with pytest.raises(ValueError, match="class_offset"):
        write_planted_cifar(tmp_path / "bad", class_offset=0.0)


def test_planted_writes_the_requested_hierarchy(tmp_path: Path) -> None:
    """Another shape than the fixture's (5 x 4 classes, 100 / 50 per class): exact counts per class
    and superclass. (How fast it writes is measured with the pipeline, benchmarks/pipeline_wall_time.py.)"""
    md5 = write_planted_cifar(
        tmp_path, num_superclasses=5, classes_per_superclass=4, train_per_class=100, test_per_class=50
    )
    data = load_cifar100(tmp_path, md5=md5)
    assert torch.bincount(data.train.labels, minlength=20).tolist() == [100] * 20
    assert torch.bincount(data.test.labels, minlength=20).tolist() == [50] * 20
    assert torch.bincount(data.superclass).tolist() == [4] * 5 and len(data.class_names) == 20


def _shift_invariant_features(images: torch.Tensor) -> torch.Tensor:
    """Per-channel Fourier magnitudes plus mean colour: blind to the random phase and shifts."""
    x = images.float() / 255.0
    return torch.cat([torch.fft.rfft2(x).abs().flatten(1), 32.0 * x.mean((2, 3))], dim=1)


def test_planted_hierarchy_is_recoverable(planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    data = load_cifar100(root, md5=md5)
    train, test = _shift_invariant_features(data.train.images), _shift_invariant_features(data.test.images)
    centroids = torch.stack([train[data.train.labels == c].mean(0) for c in range(NUM_CLASSES)])
    predicted = torch.cdist(test, centroids).argmin(1)
    assert (predicted == data.test.labels).float().mean() > 0.9  # classes are separable
    distances = torch.cdist(centroids, centroids).fill_diagonal_(float("inf"))
    nearest = distances.argmin(1)
    # Each class looks most like a sibling: the superclasses are recoverable from similarity.
    assert torch.equal(data.superclass[nearest], data.superclass)
    # Fine ids are shuffled, so superclass members are not contiguous label ranges.
    assert not torch.equal(data.superclass, data.superclass.sort().values)


# --- CIFAR-100 loader -----------------------------------------------------------------------


def test_cifar_loader_reads_planted_data(planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    data = load_cifar100(root, md5=md5)
    assert data.train.images.shape == (NUM_CLASSES * TRAIN_PER_CLASS, 3, 32, 32)
    assert data.test.images.shape == (NUM_CLASSES * TEST_PER_CLASS, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert len(data.class_names) == NUM_CLASSES and len(data.superclass_names) == SUPERS
    with open(root / FOLDER / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    # Images are the raw channel-major rows; coarse labels agree with the superclass map.
    assert torch.equal(data.train.images.reshape(len(data.train), -1), torch.from_numpy(raw[b"data"]))
    assert data.coarse_labels(data.train).tolist() == raw[b"coarse_labels"]
    assert torch.bincount(data.superclass).tolist() == [PER_SUPER] * SUPERS
    assert set(data.inputs.values()) == set(md5.values())


def test_cifar_loader_extracts_archive(tmp_path: Path, planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    archive = tmp_path / ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / FOLDER, arcname=FOLDER)
    sums = {**md5, ARCHIVE: md5_file(archive)}
    data = load_cifar100(archive, md5=sums)
    assert (tmp_path / FOLDER / "train").is_file()
    assert len(data.train) == NUM_CLASSES * TRAIN_PER_CLASS
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp dir gone


def test_cifar_archive_with_wrong_md5_is_refused(tmp_path: Path) -> None:
    (tmp_path / ARCHIVE).write_bytes(b"not an archive")
    with pytest.raises(DataError, match=f"MD5 mismatch for {tmp_path / ARCHIVE}"):
        load_cifar100(tmp_path)
    assert not (tmp_path / FOLDER).exists()


class _Trap:
    """Unpickling this object creates a directory: a visible stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("name", ["train", "test", "meta"])
def test_md5_mismatch_is_refused_before_unpickling(tmp_path: Path, name: str) -> None:
    md5 = write_planted_cifar(
        tmp_path, num_superclasses=2, classes_per_superclass=2, train_per_class=5, test_per_class=2
    )
    marker = tmp_path / "unpickled"
    trap = pickle.dumps(_Trap(marker))
    pickle.loads(trap)  # the trap works ...
    assert marker.is_dir()
    marker.rmdir()
    (tmp_path / FOLDER / name).write_bytes(trap)  # ... and now replaces a verified file
    with pytest.raises(DataError, match="MD5 mismatch") as err:
        prepare_data(_cifar_cfg(tmp_path, md5, val_size=2), tmp_path / "out")
    assert str(tmp_path / FOLDER / name) in str(err.value)
    assert "re-download" in str(err.value)
    assert not marker.exists()


def test_missing_cifar_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"CIFAR-100 not found at {tmp_path / 'nowhere'}.*data.root"):
        load_cifar100(tmp_path / "nowhere")


def _resave(root: Path, planted_root: Path, convert) -> dict[str, str]:
    """Copies of the planted files re-pickled by Python 3 after ``convert``; returns their MD5s."""
    sums = {}
    for name in ("train", "test", "meta"):
        with open(planted_root / FOLDER / name, "rb") as f:
            content = convert(pickle.load(f, encoding="bytes"))  # the recipe on the CIFAR page
        atomic_write_bytes(root / FOLDER / name, pickle.dumps(content))
        sums[name] = md5_file(root / FOLDER / name)
    return sums


def test_cifar_python3_pickles_with_bytes_keys_load_like_the_official_ones(
    tmp_path: Path, planted: tuple[Path, dict[str, str]]
) -> None:
    root, md5 = planted
    official = load_cifar100(root, md5=md5)  # Python 2 pickles: str keys under encoding="latin1"
    sums = _resave(tmp_path, root, lambda content: content)  # bytes keys (b"data", b"fine_labels", ...)
    with open(tmp_path / FOLDER / "train", "rb") as f:
        assert b"fine_labels" in pickle.load(f, encoding="latin1")
    resaved = load_cifar100(tmp_path, md5=sums)
    assert torch.equal(resaved.train.images, official.train.images)
    assert torch.equal(resaved.test.labels, official.test.labels)
    assert torch.equal(resaved.superclass, official.superclass)
    assert resaved.class_names == official.class_names and resaved.superclass_names == official.superclass_names


@pytest.mark.parametrize(
    ("convert", "message"),
    [
        (lambda content: list(content), "holds a list, not a dict"),
        (
            lambda content: {k: v for k, v in content.items() if k not in (b"fine_labels", b"fine_label_names")},
            "lacks the key",
        ),
        (
            lambda content: {**content, b"data": content[b"data"][:, :100]} if b"data" in content else content,
            "uint8 array of shape N x 3072",
        ),
    ],
    ids=["not_a_dict", "missing_key", "wrong_image_size"],
)
def test_cifar_pickles_of_another_layout_are_refused(
    tmp_path: Path, planted: tuple[Path, dict[str, str]], convert, message: str
) -> None:
    root, _ = planted
    sums = _resave(tmp_path, root, convert)
    with pytest.raises(DataError, match=message) as err:
        load_cifar100(tmp_path, md5=sums)
    assert str(tmp_path / FOLDER) in str(err.value) and "re-download" in str(err.value)


# --- prepare-data on CIFAR format -----------------------------------------------------------


def test_prepare_cifar_roundtrip(tmp_path: Path, planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    manifest = prepare_data(_cifar_cfg(root, md5), tmp_path / "out")
    source = load_cifar100(root, md5=md5)
    splits = {name: load_split(tmp_path / "out", name) for name in ("train", "val", "test")}
    total = NUM_CLASSES * TRAIN_PER_CLASS
    assert [len(splits[n]["labels"]) for n in ("train", "val", "test")] == [
        total - 60,
        60,
        NUM_CLASSES * TEST_PER_CLASS,
    ]
    for name, split in splits.items():
        assert split["images"].dtype == torch.uint8 and split["images"].shape[1:] == (3, 32, 32)
        assert split["labels"].dtype == torch.int64
        assert split["class_names"] == source.class_names
        assert torch.equal(split["superclass"], source.superclass)
        assert manifest["splits"][name]["count"] == len(split["labels"])
        assert manifest["splits"][name]["per_class"] == torch.bincount(split["labels"], minlength=NUM_CLASSES).tolist()
    train, val = _row_keys(splits["train"]["images"]), _row_keys(splits["val"]["images"])
    assert not train & val and train | val == _row_keys(source.train.images)  # disjoint, complete
    assert (tmp_path / "out" / "manifest.json").read_text().endswith("\n")


def test_prepare_is_seeded(tmp_path: Path, planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    first = prepare_data(_cifar_cfg(root, md5), tmp_path / "a")
    again = prepare_data(_cifar_cfg(root, md5), tmp_path / "b")
    other = prepare_data(_cifar_cfg(root, md5, seed=8), tmp_path / "c")
    assert first["splits"] == again["splits"]  # identical file hashes
    assert first["splits"]["val"]["sha256"] != other["splits"]["val"]["sha256"]


def test_prepare_per_class_limits_and_resize(tmp_path: Path, planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    cfg = _cifar_cfg(root, md5, val_size=240, train_per_class=10, val_per_class=4, test_per_class=5, resize=16)
    manifest = prepare_data(cfg, tmp_path)
    assert manifest["image_shape"] == [3, 16, 16]
    for name, count in (("train", 10), ("val", 4), ("test", 5)):
        assert manifest["splits"][name]["per_class"] == [count] * NUM_CLASSES
        assert load_split(tmp_path, name)["images"].shape == (count * NUM_CLASSES, 3, 16, 16)


def test_per_class_limit_larger_than_class_is_refused(tmp_path: Path, planted: tuple[Path, dict[str, str]]) -> None:
    root, md5 = planted
    with pytest.raises(DataError, match="data.test_per_class=11"):
        prepare_data(_cifar_cfg(root, md5, test_per_class=TEST_PER_CLASS + 1), tmp_path)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"source": "cifar100", "colour": 1}, "unknown key 'colour'"),
        ({"source": "imagenet"}, "data.source must be one of"),
        ({"source": "cifar100", "val_size": -1}, "data.val_size must be an integer >= 0"),
        ({"source": "cifar100", "resize": True}, "data.resize must be null or an integer >= 1"),
        ({"source": "cifar100", "download": "yes"}, "data.download must be true or false"),
        ({"source": "fashion_mnist", "md5": {"train": "0"}}, "data.md5"),
        ({"source": "cifar100", "md5": {"trian": "0"}}, "unknown CIFAR-100 file 'trian'"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, cfg: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        prepare_data({"root": str(tmp_path), **cfg}, tmp_path / "out")


# --- load_split integrity -------------------------------------------------------------------


def test_load_split_detects_tampering_and_missing_manifest(
    tmp_path: Path, planted: tuple[Path, dict[str, str]]
) -> None:
    root, md5 = planted
    prepare_data(_cifar_cfg(root, md5, test_per_class=2), tmp_path)
    blob = bytearray((tmp_path / "test.pt").read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / "test.pt").write_bytes(bytes(blob))
    with pytest.raises(DataError, match=r"test\.pt does not match its manifest.*re-run `splitnet prepare-data`"):
        load_split(tmp_path, "test")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json is missing.*re-run `splitnet prepare-data`"):
        load_split(tmp_path, "train")


def test_interrupted_prepare_leaves_no_manifest(
    tmp_path: Path, planted: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, md5 = planted
    prepare_data(_cifar_cfg(root, md5), tmp_path)
    from splitnet.data import prepare

    def crash(obj: object, path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "atomic_torch_save", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(_cifar_cfg(root, md5, seed=9), tmp_path)
    assert not (tmp_path / "manifest.json").exists()


# --- Fashion-MNIST --------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _write_fashion(directory: Path, train_per_class: int = 30, test_per_class: int = 10) -> None:
    """Tiny Fashion-MNIST look-alike in the original IDX .gz format."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class))
        images = rng.integers(0, 256, (len(labels), 28, 28))
        image_file, label_file = FILES[split]
        _write_idx(directory / image_file, images, 0x803)
        _write_idx(directory / label_file, labels, 0x801)


def test_prepare_fashion_from_idx_files(tmp_path: Path) -> None:
    _write_fashion(tmp_path / "raw")
    cfg = {
        "source": "fashion_mnist",
        "root": str(tmp_path / "raw"),
        "val_size": 100,
        "train_per_class": 15,
        "val_per_class": 3,
        "test_per_class": 4,
        "resize": 16,
    }
    manifest = prepare_data(cfg, tmp_path / "out")
    train = load_split(tmp_path / "out", "train")
    assert train["images"].shape == (150, 1, 16, 16) and train["images"].dtype == torch.uint8
    assert train["class_names"] == CLASS_NAMES and train["superclass_names"] == SUPERCLASS_NAMES
    superclass = dict(zip(CLASS_NAMES, train["superclass"].tolist()))
    assert {c for c, s in superclass.items() if s == 0} == {"T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"}
    assert {c for c, s in superclass.items() if s == 1} == {"Sandal", "Sneaker", "Ankle boot"}
    assert manifest["splits"]["val"]["per_class"] == [3] * 10
    assert manifest["splits"]["test"]["count"] == 40
    assert len(manifest["inputs"]) == 4


def test_fashion_bad_magic_is_refused(tmp_path: Path) -> None:
    _write_fashion(tmp_path)
    _write_idx(tmp_path / FILES["test"][1], np.zeros(100), 0x803)  # image magic on a label file
    with pytest.raises(DataError, match=f"{tmp_path / FILES['test'][1]}: bad IDX magic number 0x00000803"):
        prepare_data({"source": "fashion_mnist", "root": str(tmp_path)}, tmp_path / "out")


def test_fashion_truncated_and_non_gzip_files_are_refused(tmp_path: Path) -> None:
    _write_fashion(tmp_path)
    image_file = tmp_path / FILES["train"][0]
    image_file.write_bytes(gzip.decompress(image_file.read_bytes())[:-5])  # not gzip any more
    with pytest.raises(DataError, match=f"{image_file} is not a valid gzip file"):
        prepare_data({"source": "fashion_mnist", "root": str(tmp_path)}, tmp_path / "out")
    _write_idx(image_file, np.zeros((3, 28, 28)), 0x803)  # 3 images for 300 labels
    with pytest.raises(DataError, match="300 labels for 3 images"):
        prepare_data({"source": "fashion_mnist", "root": str(tmp_path)}, tmp_path / "out")


def test_fashion_missing_directory_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(DataError, match=f"directory {missing} does not exist.*apt-get install dataset-fashion-mnist"):
        prepare_data({"source": "fashion_mnist", "root": str(missing)}, tmp_path / "out")


def test_fashion_root_that_is_no_directory_says_why(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match=f"{tmp_path / 'a_file'} is a file, not a directory"):
        prepare_data({"source": "fashion_mnist", "root": str(tmp_path / "a_file")}, tmp_path / "out")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # not "does not exist": it does, and loops
    with pytest.raises(DataError, match=f"{tmp_path / 'loop'}: symlink loop"):
        prepare_data({"source": "fashion_mnist", "root": str(tmp_path / "loop")}, tmp_path / "out")


def test_resize_area_averages_blocks() -> None:
    images = torch.tensor([[0, 2, 4, 6], [2, 4, 6, 9]] * 2, dtype=torch.uint8).reshape(1, 1, 4, 4)
    assert resize_area(images, 2).tolist() == [[[[2, 6], [2, 6]]]]  # 6.25 rounds to 6


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason=f"{DEFAULT_ROOT} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_small_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed files are read in place (no download is attempted) and only the kept images
    are resized (14k, not all 70k). Its speed is not a test's business (benchmarks/)."""
    import torchvision.datasets

    downloads, resized = [], []

    def no_download(*args: object, **kwargs: object) -> None:
        downloads.append((args, kwargs))
        raise AssertionError("prepare-data tried to download Fashion-MNIST although it is installed")

    def counting_resize(images: torch.Tensor, side: int) -> torch.Tensor:
        resized.append(len(images))
        return resize_area(images, side)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_download)
    monkeypatch.setattr(splitnet.data.prepare, "resize_area", counting_resize)
    cfg = {
        "source": "fashion_mnist",
        "train_per_class": 1000,
        "val_per_class": 200,
        "test_per_class": 200,
        "resize": 16,
    }
    manifest = prepare_data(cfg, tmp_path)
    assert downloads == [] and manifest["settings"]["download"] is False
    assert sorted(manifest["inputs"]) == sorted(str(DEFAULT_ROOT / name) for pair in FILES.values() for name in pair)
    assert sorted(resized) == [2000, 2000, 10000]  # train, val, test after the per-class limits
    assert [manifest["splits"][n]["count"] for n in ("train", "val", "test")] == [10000, 2000, 2000]
    test = load_split(tmp_path, "test")
    assert test["images"].shape == (2000, 1, 16, 16)
    assert 20 < test["images"].float().mean() < 120  # real garments on a dark background
