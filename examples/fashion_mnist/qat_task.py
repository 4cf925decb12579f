"""QAT task spec for the Fashion-MNIST example CNN (``onnxq qat``'s TASK argument).

    onnxq qat examples/fashion_mnist/qat_task.py:TASK --profile cpu-x86-vnni --epochs 1 \\
        -o examples/fashion_mnist/out/fashion_cnn.qat.onnx

>>> from onnxq.qat import load_task
>>> task = load_task("examples/fashion_mnist/qat_task.py:TASK")          # doctest: +SKIP
>>> task.lr, task.epochs                                                 # doctest: +SKIP
(0.0001, 1)

The FP32 network is the example's trained checkpoint (``out/fashion_cnn.pt``; trained here for 6
epochs if it is missing). QAT fine-tunes it with Adam (1e-4, cosine-annealed to 0) on shuffled,
randomly flipped training batches, as the FP32 training did. Set ``FASHION_QAT_TRAIN_LIMIT=N`` to
train on the first N images only (smoke tests), ``FASHION_QAT_SEED`` to change the batch order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from data import load_fashion_mnist  # noqa: E402

from onnxq.qat.task import QATTask  # noqa: E402

__all__ = ["TASK", "load_model", "batches"]

_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _split(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in _CACHE:
        _CACHE[name] = load_fashion_mnist(name)
    return _CACHE[name]


def load_model():
    """The trained FP32 CNN (trains and saves it first if the checkpoint is missing)."""
    import torch
    from model import make_model
    from train import CHECKPOINT, train

    ckpt = HERE / "out" / CHECKPOINT
    if not ckpt.exists():
        print(f"qat_task: {ckpt} not found; training the FP32 model first (6 epochs)", file=sys.stderr)
        train(epochs=6, out_dir=HERE / "out")
    model = make_model()
    model.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu"))
    return model.eval()


class batches:
    """Re-iterable (x, y) torch batches; training batches are reshuffled (seeded) and flipped each pass."""

    def __init__(self, split: str, batch_size: int, *, train: bool = False, limit: int | None = None, seed: int = 0):
        self.split, self.batch_size, self.train, self.limit, self.seed = split, batch_size, train, limit, seed
        self._passes = 0

    def _data(self):
        x, y = _split(self.split)
        if self.limit:
            x, y = x[: self.limit], y[: self.limit]
        return x, y

    def __len__(self) -> int:
        return -(-len(self._data()[1]) // self.batch_size)

    def __iter__(self):
        import torch

        x, y = self._data()
        rng = np.random.default_rng(self.seed + self._passes)
        self._passes += 1
        order = rng.permutation(len(y)) if self.train else np.arange(len(y))
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            xb = x[idx]
            if self.train:
                flip = rng.random(len(idx)) < 0.5
                xb[flip] = xb[flip][..., ::-1]
            yield torch.from_numpy(np.ascontiguousarray(xb)), torch.from_numpy(y[idx])


def _limit() -> int | None:
    text = os.environ.get("FASHION_QAT_TRAIN_LIMIT", "").strip()
    return int(text) if text else None


def _seed() -> int:
    return int(os.environ.get("FASHION_QAT_SEED", "0") or 0)


TASK = QATTask(
    name="fashion-mnist-cnn",
    model=load_model,
    train_data=lambda: batches("train", 128, train=True, limit=_limit(), seed=_seed()),
    eval_data=lambda: batches("test", 1000),
    # calibration: the first 256 + 32 training images in file order, the same data PTQ static gets
    calibration=lambda: {"input": _split("train")[0][:288]},
    lr=1e-4,
    epochs=1,
)
