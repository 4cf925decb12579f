"""onnxq: portable INT8 ONNX models, and measured answers to "PTQ or QAT, on my hardware?".

>>> import onnxq
>>> res = onnxq.quantize("model.onnx", mode="static", calibration="calib.npz")   # doctest: +SKIP
>>> print(res.fidelity, res.recipe.op_types)                                      # doctest: +SKIP

Heavy dependencies load lazily: ``import onnxq`` pulls in neither onnxruntime nor torch.
"""

from __future__ import annotations

__version__ = "0.2.0"
__all__ = ["quantize", "export", "export_keras", "load_profile", "resolve", "Recipe", "OnnxqError", "__version__"]

from .errors import OnnxqError
from .plan import Recipe, resolve
from .profiles import load_profile


def quantize(*args, **kwargs):
    """See :func:`onnxq.ptq.quantize`."""
    from .ptq import quantize as _q

    return _q(*args, **kwargs)


def export(*args, **kwargs):
    """See :func:`onnxq.torch_export.export` (needs the torch extra)."""
    from .torch_export import export as _e

    return _e(*args, **kwargs)


def export_keras(*args, **kwargs):
    """See :func:`onnxq.tf_export.export_keras` (needs the tf extra)."""
    from .tf_export import export_keras as _k

    return _k(*args, **kwargs)
