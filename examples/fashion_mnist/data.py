"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx.gz files), numpy only.

>>> from data import load_fashion_mnist
>>> x, y = load_fashion_mnist("test")        # doctest: +SKIP
>>> x.shape, x.dtype, y[:3]                  # doctest: +SKIP
((10000, 1, 28, 28), dtype('float32'), array([9, 2, 1]))

Images are normalised as ``(x / 255 - MEAN) / STD`` (the training set's statistics).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "DATA_DIR", "MEAN", "STD", "load_fashion_mnist", "load_raw", "normalise"]

DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DataMissing(RuntimeError):
    """The Fashion-MNIST files are not where we look for them."""


def _read_idx(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataMissing(
            f"{path} not found: install the Debian package (apt-get install dataset-fashion-mnist) "
            "or point FASHION_MNIST_DIR at a folder holding the four *-ubyte.gz files"
        )
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {data.size} bytes of data for shape {dims}")
    return data.reshape(dims)


def load_raw(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and int64 labels (N,)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_name, lbl_name = _FILES[split]
    images = _read_idx(DATA_DIR / img_name)
    labels = _read_idx(DATA_DIR / lbl_name).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def normalise(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), ``(x / 255 - MEAN) / STD``."""
    x = images_u8.astype(np.float32) / 255.0
    return ((x - MEAN) / STD).astype(np.float32)[:, None, :, :]


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """float32 images (N, 1, 28, 28), normalised, and int64 labels (N,)."""
    images, labels = load_raw(split)
    return normalise(images), labels
