"""The deliberately hard case: one weight scale per tensor on a depthwise-separable CNN (Fashion-MNIST).

    onnxq qat examples/hard_case/qat_task.py:TASK --profile cpu-x86-vnni --no-per-channel --epochs 1 \
        -o examples/hard_case/out/dscnn.qat.onnx
    onnxq qat examples/hard_case/qat_task.py:INT4_TASK --profile cpu-x86-vnni --weight-type int4 --epochs 1 \
        -o examples/hard_case/out/dscnn.qat-int4.onnx

>>> from onnxq.qat import load_task
>>> load_task("examples/hard_case/qat_task.py:TASK").options                 # doctest: +SKIP
{'per_channel': False}

Why this is hard for PTQ: small CNNs lose almost nothing to 8-bit PTQ (Fashion-MNIST CNN: FP32
90.40 / static 90.34), and this MobileNet-style network does not either with the profile's
per-channel weights. Its 3x3 depthwise convolutions have 9 weights per channel, scaled by the
folded BatchNorm, so their per-channel ranges differ by orders of magnitude: with ONE scale per
weight tensor (``per_channel=False``, what many accelerators and older toolchains do) most
channels are rounded to a handful of levels, or to zero, and PTQ loses over 20 points here. QAT
lets the weights move to where that coarse grid hurts least. ``INT4_TASK`` is the low-bit case:
onnxruntime's int4 weights ([-8, 7], per channel) on the same network.

The FP32 network trains here for 4 epochs the first time (``out/dscnn.pt``, a few minutes on CPU).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dscnn import make_model  # noqa: E402

from onnxq.qat.task import QATTask  # noqa: E402

__all__ = ["TASK", "INT4_TASK", "load_model", "train_fp32", "CHECKPOINT"]

CHECKPOINT = HERE / "out" / "dscnn.pt"
FP32_EPOCHS = 4


def _fm():
    """The Fashion-MNIST example's loaders (examples/fashion_mnist/qat_task.py), loaded by path."""
    name = "onnxq_example_fashion_mnist_qat_task"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE.parent / "fashion_mnist" / "qat_task.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def train_fp32(epochs: int = FP32_EPOCHS, seed: int = 0, lr: float = 0.01) -> None:
    """Train the DS-CNN (AdamW, one-cycle, random flips) and save ``out/dscnn.pt`` atomically."""
    import torch

    torch.manual_seed(seed)
    fm = _fm()
    model = make_model()
    data = fm.batches("train", 128, train=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(data))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for xb, yb in data:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"hard_case: FP32 epoch {epoch + 1}/{epochs} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    tmp = CHECKPOINT.with_suffix(".pt.tmp")
    torch.save(model.eval().state_dict(), tmp)
    tmp.replace(CHECKPOINT)


def load_model():
    import torch

    if not CHECKPOINT.exists():
        print(f"hard_case: {CHECKPOINT} not found; training the FP32 DS-CNN first ({FP32_EPOCHS} epochs)", file=sys.stderr)
        train_fp32()
    model = make_model()
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True, map_location="cpu"))
    return model.eval()


def _train_data():
    fm = _fm()
    return fm.batches("train", 128, train=True, limit=fm._limit(), seed=1)


def _eval_data():
    return _fm().batches("test", 1000)


def _calibration():
    return {"input": _fm()._split("train")[0][:288]}


TASK = QATTask(
    name="hard-case-dscnn-per-tensor-int8",
    model=load_model,
    train_data=_train_data,
    eval_data=_eval_data,
    calibration=_calibration,
    lr=2e-4,
    epochs=1,
    options={"per_channel": False},
)

INT4_TASK = dataclasses.replace(TASK, name="hard-case-dscnn-int4", options={"weight_type": "int4"})
