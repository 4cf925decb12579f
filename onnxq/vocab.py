"""onnxq's vocabularies, defined once: profiles validate against them, the recipe resolves them and
every CLI ``choices=`` uses them. Standard library only (nothing imported at all).

>>> from onnxq.vocab import MODES, METHODS
>>> MODES, METHODS[:3]
(('static', 'dynamic', 'fp16'), ('minmax', 'entropy', 'percentile'))
"""

from __future__ import annotations

__all__ = [
    "MODES", "METHODS", "WEIGHT_TYPES", "ACTIVATION_TYPES", "DYNAMIC_WEIGHT_TYPES", "QAT_WEIGHT_TYPES", "FOUR_BIT",
    "OPT_LEVELS", "FORMATS", "BIAS_CORRECTION", "TARGET_METRICS", "KNOWN_PROVIDERS", "COMPARE_METRICS", "EVAL_METRICS", "percentile_problem",
    "samples_problem", "EMBEDDING_OUTPUTS", "is_embedding_name",
]

MODES = ("static", "dynamic", "fp16")
# How the range of one activation is read from the calibration stream (see onnxq.calibration).
# minmax / entropy / percentile read the whole stream; mean_* average each calibration batch's own statistic.
METHODS = ("minmax", "entropy", "percentile", "mean_minmax", "mean_percentile")
WEIGHT_TYPES = ("int8", "uint8", "int4", "uint4")
BIAS_CORRECTION = ("none", "fast", "full")  # see onnxq.algorithms.bias_correction
# --target METRIC=VALUE: per-sample mean cosine, top-1 agreement, SQNR (dB) and softmax KL (lower is better)
TARGET_METRICS = {"cosine": "mean cosine to FP32", "top1": "top-1 agreement with FP32", "sqnr": "SQNR vs FP32 (dB)",
                  "kl": "mean softmax KL vs FP32"}
ACTIVATION_TYPES = ("uint8", "int8")
DYNAMIC_WEIGHT_TYPES = ("int8", "uint8")  # onnxruntime's dynamic quantizer has no 4-bit path
QAT_WEIGHT_TYPES = ("int8", "int4")  # signed symmetric weights: what onnxq.qat fake-quantizes
FOUR_BIT = ("int4", "uint4")  # standard QDQ needs opset 21 for these
OPT_LEVELS = ("disable", "basic", "extended", "all")
FORMATS = ("qdq",)
KNOWN_PROVIDERS = (
    "CPUExecutionProvider",
    "CUDAExecutionProvider",
    "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider",
    "DnnlExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "CoreMLExecutionProvider",
    "QNNExecutionProvider",
    "DmlExecutionProvider",
    "XnnpackExecutionProvider",
)
COMPARE_METRICS = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "agreement": "top-1 agreement with FP32",
    "kl": "mean KL divergence from FP32 (softmax)",
    "cosine": "mean cosine similarity to FP32",
    "sqnr": "SQNR vs FP32 (dB)",
}
EVAL_METRICS = ("top1", "top5", "cosine", "mse", "agreement", "kl", "sqnr")


def percentile_problem(value: float) -> str | None:
    """Why ``value`` is not a usable percentile, or None (the one check profiles and the recipe share)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 50.0 < float(value) <= 100.0:
        return f"percentile must be a number in (50, 100], got {value!r}"
    return None


def samples_problem(value: int) -> str | None:
    """Why ``value`` is not a usable calibration sample count, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"calibration samples must be a positive integer, got {value!r}"
    return None


# Outputs named like these are vectors compared by direction, not class scores: an (N, 384) sentence embedding has
# the shape of (N, classes) logits, but a softmax over its features (KL, top-1 agreement) means nothing.
EMBEDDING_OUTPUTS = ("embedding", "pooler", "pooled", "feature", "hidden", "encoder", "vector")


def is_embedding_name(name: str) -> bool:
    """Whether an output's name says it is an embedding/feature vector (judged by cosine, never by KL)."""
    return any(e in name.lower() for e in EMBEDDING_OUTPUTS)
