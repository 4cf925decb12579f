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

__all__ = ["fidelity", "accuracy", "is_classifier_output", "softmax_kl", "target_score"]


def is_classifier_output(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] > 1 and np.issubdtype(a.dtype, np.floating)


def _per_sample_cosine(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    rf, cf = r.reshape(len(r), -1), c.reshape(len(c), -1)
    ok = np.isfinite(rf) & np.isfinite(cf)
    rf, cf = np.where(ok, rf, 0.0), np.where(ok, cf, 0.0)
    nr, nc = np.linalg.norm(rf, axis=1), np.linalg.norm(cf, axis=1)
    both = (nr > 0) & (nc > 0)
    cos = np.where(both, (rf * cf).sum(axis=1) / np.where(both, nr * nc, 1.0), (nr == nc).astype(np.float64))
    return cos


def softmax_kl(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(cand)) per sample (natural log), for (N, classes) logits."""
    r = ref - ref.max(axis=1, keepdims=True)
    c = cand - cand.max(axis=1, keepdims=True)
    lp = r - np.log(np.exp(r).sum(axis=1, keepdims=True))
    lq = c - np.log(np.exp(c).sum(axis=1, keepdims=True))
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def fidelity(ref: np.ndarray, cand: np.ndarray) -> dict[str, Any]:
    """Cosine similarity (whole tensor, and per sample: mean / min), SQNR (dB), max-abs error; for (N, classes)
    outputs also top-1 agreement and the mean KL divergence of the softmax (``kl_mean``, nats)."""
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
    sqnr = float("inf") if noise == 0 else (float(10 * np.log10(signal / noise)) if signal > 0 else float("-inf"))
    out: dict[str, Any] = {
        "cosine": cosine,
        "sqnr_db": sqnr,
        "max_abs": float(np.max(np.abs(rf - cf))) if rf.size else 0.0,
        "nonfinite_mismatch": int((~finite).sum()),
    }
    if r.ndim >= 1 and len(r):
        per = _per_sample_cosine(r, c)
        out["cosine_mean"], out["cosine_min"] = float(per.mean()), float(per.min())
    if is_classifier_output(r):
        out["top1_agreement"] = float(np.mean(np.argmax(r, 1) == np.argmax(c, 1)))
        if np.all(np.isfinite(r)) and np.all(np.isfinite(c)):
            out["kl_mean"] = max(0.0, float(softmax_kl(r, c).mean()))
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy in [0, 1]."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if k == 1:
        return float(np.mean(np.argmax(logits, 1) == labels))
    topk = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean((topk == labels[:, None]).any(axis=1)))


def target_score(ref: np.ndarray, cand: np.ndarray, metric: str) -> float:
    """One number for ``--target``: per-sample mean cosine, top-1 agreement, SQNR dB, or mean softmax KL."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if metric == "cosine":
        return float(_per_sample_cosine(r, c).mean())
    if metric == "top1":
        return float(np.mean(np.argmax(r, 1) == np.argmax(c, 1)))
    if metric == "kl":
        return max(0.0, float(softmax_kl(r, c).mean()))
    f = fidelity(r, c)
    return float(f["sqnr_db"])
