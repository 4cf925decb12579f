"""PTQ algorithms that make static INT8 more faithful without changing the layout onnxruntime fuses.

Each is a small stage on the float graph (or the ranges), run by :func:`onnxq.ptq.quantize` before
onnxruntime's quantizer writes the QDQ model, switched by the recipe (profile, CLI, Python API) and
recorded in the manifest:

- :mod:`.bias_correction`: fast (per layer, FP32 inputs) and full (measured on the quantized model);
- :mod:`.smoothquant`: per-channel smoothing of MatMul/Gemm inputs folded into the LayerNormalization before them;
- :mod:`.cle`: cross-layer equalization of Conv -> activation -> Conv pairs, with bias absorption;
- :mod:`.sensitivity`: per-node sensitivity and the accuracy-targeted float fallback.

They import onnx and numpy; models run through :mod:`onnxq.runtime` and :mod:`onnxq.calibration`.
"""
