"""Quantization-aware training whose ONNX output is interchangeable with onnxq's PTQ.

>>> import onnxq.qat as qat
>>> net = qat.prepare(model, profile="cpu-x86-vnni", example_inputs=(x,), calibration=loader)  # doctest: +SKIP
>>> for xb, yb in loader: ...                                   # your own training loop      # doctest: +SKIP
>>> qat.export(net, (x,), "model.qat.onnx").fused                                            # doctest: +SKIP
{'integer': {'QLinearConv': 3, 'QGemm': 1}, 'float_after_dq': {}}

Needs the torch extra (``pip install torch==2.13.0``); importing this package does not import torch.
"""

from __future__ import annotations

__all__ = ["prepare", "export", "run_task", "QATTask", "load_task", "is_prepared"]


def prepare(*args, **kwargs):
    """See :func:`onnxq.qat._api.prepare`."""
    from ._api import prepare as _p

    return _p(*args, **kwargs)


def export(*args, **kwargs):
    """See :func:`onnxq.qat._api.export`."""
    from ._api import export as _e

    return _e(*args, **kwargs)


def is_prepared(model) -> bool:
    from ._api import is_prepared as _i

    return _i(model)


def run_task(*args, **kwargs):
    """See :func:`onnxq.qat.task.run_task`."""
    from .task import run_task as _r

    return _r(*args, **kwargs)


def load_task(*args, **kwargs):
    from .task import load_task as _l

    return _l(*args, **kwargs)


def __getattr__(name):
    if name == "QATTask":
        from .task import QATTask

        return QATTask
    raise AttributeError(name)
