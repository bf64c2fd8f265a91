"""Data layer: load CIFAR-100 or Fashion-MNIST, split and subset them, write the prepared splits."""

from splitnet.data.cifar100 import load_cifar100
from splitnet.data.errors import DataError
from splitnet.data.fashion_mnist import load_fashion_mnist
from splitnet.data.planted import write_planted_cifar
from splitnet.data.prepare import DataSettings, load_split, parse_config, prepare_data, read_manifest
from splitnet.data.source import ImageSet, SourceData

__all__ = [
    "DataError",
    "DataSettings",
    "ImageSet",
    "SourceData",
    "load_cifar100",
    "load_fashion_mnist",
    "load_split",
    "parse_config",
    "prepare_data",
    "read_manifest",
    "write_planted_cifar",
]
