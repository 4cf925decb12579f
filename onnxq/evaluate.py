"""Fidelity and accuracy metrics on plain numpy arrays.

>>> import numpy as np
>>> from onnxq.evaluate import fidelity
>>> ref = np.array([[1.0, 2.0, 3.0]]); cand = ref + 0.01
>>> f = fidelity(ref, cand); round(f["cosine"], 4), f["top1_agreement"]
(1.0, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["fidelity", "accuracy", "is_classifier_output"]


def is_classifier_output(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating)


def fidelity(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """Cosine similarity, SQNR (dB), max-abs error; top-1 agreement for (N, classes) outputs."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if r.shape != c.shape:
        raise ValueError(f"shapes differ: reference {r.shape} vs candidate {c.shape}")
    rf, cf = r.ravel(), c.ravel()
    finite = np.isfinite(rf) & np.isfinite(cf)
    rf, cf = rf[finite], cf[finite]
    denom = np.linalg.norm(rf) * np.linalg.norm(cf)
    cosine = float(rf @ cf / denom) if denom > 0 else float(np.allclose(rf, cf))
    noise = float(np.sum((rf - cf) ** 2))
    signal = float(np.sum(rf**2))
    sqnr = float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal > 0 else float("-inf"))
    out: dict[str, Any] = {
        "cosine": cosine,
        "sqnr_db": sqnr,
        "max_abs": float(np.max(np.abs(rf - cf))) if rf.size else 0.0,
        "nonfinite_mismatch": int((~finite).sum()),
    }
    if is_classifier_output(r):
        out["top1_agreement"] = float(np.mean(np.argmax(r, 1) == np.argmax(c, 1)))
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy in [0, 1]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if k == 1:
        return float(np.mean(np.argmax(logits, 1) == labels))
    topk = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean((topk == labels[:, None]).any(axis=1)))
