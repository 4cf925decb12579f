"""The Keras twin of ``examples/fashion_mnist/model.py`` (NHWC), and Fashion-MNIST as NHWC float32.

>>> from keras_model import make_model, load_nhwc
>>> make_model().count_params()          # doctest: +SKIP
24282
>>> load_nhwc("test")[0].shape           # doctest: +SKIP
(10000, 28, 28, 1)

Conv-BN-ReLU blocks (16, 32, 64 channels), global average pooling and a Dense classifier, the same
shape as the PyTorch example's CNN, but channels last as Keras builds it. BatchNorm uses PyTorch's
momentum (0.1, Keras ``momentum=0.9``): with Keras' 0.99 the moving statistics lag after 2 epochs. Images are normalised with
the PyTorch example's statistics; its reader (``examples/fashion_mnist/data.py``, numpy only) is reused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "fashion_mnist"))

from data import CLASSES, MEAN, STD, load_raw  # noqa: E402

__all__ = ["CLASSES", "make_model", "load_nhwc"]


def load_nhwc(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """float32 images (N, 28, 28, 1), ``(x / 255 - MEAN) / STD``, and int64 labels (N,)."""
    images, labels = load_raw(split)
    x = images.astype(np.float32) / 255.0
    return ((x - MEAN) / STD).astype(np.float32)[:, :, :, None], labels


def make_model(classes: int = 10):
    """(N, 28, 28, 1) normalised images -> (N, 10) logits."""
    import keras
    from keras import layers

    def block(x, ch: int, name: str):
        x = layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # PyTorch's default momentum
        return layers.ReLU(name=f"{name}_relu")(x)

    inp = keras.Input((28, 28, 1), name="input")
    x = layers.MaxPooling2D(name="pool1")(block(inp, 16, "b1"))   # 28 -> 14
    x = layers.MaxPooling2D(name="pool2")(block(x, 32, "b2"))     # 14 -> 7
    x = layers.GlobalAveragePooling2D(name="gap")(block(x, 64, "b3"))
    out = layers.Dense(classes, name="logits")(x)
    return keras.Model(inp, out, name="fashion_cnn_keras")
