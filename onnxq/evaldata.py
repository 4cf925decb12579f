"""Evaluation data (inputs + optional labels in one .npz), checked against a model, and metrics.

>>> from onnxq.evaldata import load_eval_data, run_model, eval_metrics
>>> data = load_eval_data("eval.npz", specs, labels_key="labels")          # doctest: +SKIP
>>> outs = run_model(session, data, batch_size=32)                          # doctest: +SKIP
>>> eval_metrics(outs, data, ref=ref_outs)["accuracy"]["top1"]              # doctest: +SKIP
0.91

The .npz holds one array per model input (leading axis = samples) and, for task accuracy, integer
class labels of shape (N,) or (N, 1) under ``labels_key`` (default ``labels``). Every problem is an
InputError (exit 2) that names the key, the shape found and the shape expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .calibration import InputSpec, check_input_layout, human_bytes, check_input_array, open_npz
from .errors import InputError
from .evaluate import accuracy, fidelity, is_classifier_output

__all__ = ["EvalData", "load_eval_data", "run_model", "eval_metrics", "check_labels", "DEFAULT_LABELS"]

DEFAULT_LABELS = "labels"
EVAL_MAX_BYTES = 4 << 30  # evaluation data is held in memory (batching, labels): larger sets are refused, not swapped


def _fmt(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else (d or "N") for d in shape) + ")"


@dataclass
class EvalData:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    labels_key: str | None
    origin: str
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int, *, pad: bool) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(real rows, feed) per batch; with ``pad`` the last batch is filled up by repeating rows."""
        n = self.count
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            feed = {k: v[start:stop] for k, v in self.inputs.items()}
            real = stop - start
            if pad and real < batch_size:
                idx = np.arange(batch_size) % real
                feed = {k: v[idx] for k, v in feed.items()}
            yield real, feed


def load_eval_data(
    path: str | os.PathLike,
    specs: Sequence[InputSpec],
    *,
    labels_key: str | None = None,
    allow_extra: bool = False,
) -> EvalData:
    """Read ``path`` (.npz) and check it against the model inputs ``specs``.

    ``labels_key=None`` uses ``labels`` when present; an explicitly named key must exist.
    Keys that are neither inputs nor the labels are an error (a misspelt ``label`` would otherwise
    silently drop accuracy), unless ``allow_extra``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"evaluation data {path} does not exist; pass a .npz keyed by input name (+ labels)")
    if path.suffix.lower() != ".npz":
        raise InputError(f"evaluation data {path} must be a .npz holding one array per model input (+ labels)")
    names = [s.name for s in specs]
    members = open_npz(path, keys=names + [labels_key or DEFAULT_LABELS], role="evaluation")  # headers only
    explicit = labels_key is not None
    key = labels_key if explicit else (DEFAULT_LABELS if DEFAULT_LABELS in members and DEFAULT_LABELS not in names else None)
    missing = [n for n in names if n not in members]
    if explicit and labels_key not in members:
        missing.append(f"{labels_key} (labels)")
    extra = [k for k in members if k not in names and k != key]
    if missing or (extra and not allow_extra):
        raise InputError(
            f"evaluation data {path} has keys {sorted(members)} but the model needs inputs {names}"
            + (f" and labels under {labels_key!r}" if explicit else "")
            + f": missing {missing or 'none'}, unexpected {extra or 'none'}"
            + ("; name the labels key with --labels KEY" if extra and key is None else "")
        )
    # shapes and dtypes from the headers, before anything is read
    notes: list[str] = []
    rows = None
    for s in specs:
        m = members[s.name]
        check_input_layout(m.shape, m.dtype, s, str(path), notes, role="evaluation", single_sample_ok=False)
        if rows is None:
            rows = m.rows
        elif m.rows != rows:
            raise InputError(f"evaluation data {path}: inputs hold different sample counts ({rows} vs {m.rows} for {s.name!r})")
    if not rows:
        raise InputError(f"evaluation data {path} holds no samples; provide at least one")
    needed = [members[n] for n in names] + ([members[key]] if key is not None else [])
    total = sum(m.h.nbytes for m in needed)
    if total > EVAL_MAX_BYTES:
        raise InputError(
            f"evaluation data {path} needs {human_bytes(total)} in memory ({rows} samples), over the {human_bytes(EVAL_MAX_BYTES)} onnxq "
            "evaluates at once; evaluate a subset of the samples"
        )
    inputs: dict[str, np.ndarray] = {}
    for s in specs:
        inputs[s.name] = check_input_array(members[s.name].read_all(), s, str(path), notes, role="evaluation",
                                           single_sample_ok=False)
    labels = None
    if key is not None:
        labels = _check_labels_array(members[key].read_all(), key, rows, path, notes)
    return EvalData(inputs, labels, key, str(path), sorted(set(notes)))


def _check_labels_array(value: np.ndarray, key: str, rows: int, path: Path, notes: list[str]) -> np.ndarray:
    lab = np.asarray(value)
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1:
        raise InputError(
            f"labels {key!r} in {path} have shape {lab.shape}; expected class indices of shape ({rows},) "
            "(one-hot labels: take argmax(axis=1) first)"
        )
    if len(lab) != rows:
        raise InputError(f"labels {key!r} in {path} hold {len(lab)} entries but the inputs hold {rows} samples")
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab)):
            notes.append(f"{key}: float labels cast to int64")
        else:
            raise InputError(f"labels {key!r} in {path} have dtype {lab.dtype} with non-integer values; labels must be class indices")
    return lab.astype(np.int64)


def check_labels(labels: np.ndarray, classes: int, origin: str, output: str) -> None:
    """Labels must index the model's classes: 0 <= label < classes."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        bad = int(((labels < 0) | (labels >= classes)).sum())
        raise InputError(
            f"labels in {origin} are out of range: {bad} value(s) outside 0..{classes - 1} (found {lo}..{hi}) but output "
            f"{output!r} has {classes} classes; check the labels key or the model"
        )


def run_model(sess: Any, data: EvalData, batch_size: int = 32) -> dict[str, np.ndarray]:
    """All outputs of ``sess`` on every sample of ``data``, in order (padded batches trimmed)."""
    ins = sess.get_inputs()
    fixed = ins[0].shape[0] if ins and ins[0].shape and isinstance(ins[0].shape[0], int) else None
    bs = fixed or batch_size
    names = [o.name for o in sess.get_outputs()]
    outs: list[list[np.ndarray]] = [[] for _ in names]
    for real, feed in data.batches(bs, pad=fixed is not None):
        for i, v in enumerate(sess.run(None, feed)):
            outs[i].append(np.asarray(v)[:real])
    return {n: np.concatenate(o) for n, o in zip(names, outs)}


def eval_metrics(
    outputs: dict[str, np.ndarray],
    data: EvalData,
    *,
    ref: dict[str, np.ndarray] | None = None,
    output_name: str | None = None,
) -> dict[str, Any]:
    """Task accuracy (top-1/top-5, with labels) on one output; fidelity (+ MSE) vs ``ref`` per output."""
    main, why = choose_output(outputs, output_name)
    res: dict[str, Any] = {"output": main, "output_reason": why, "samples": data.count}
    if data.labels is not None:
        logits = outputs[main]
        if not is_classifier_output(logits):
            raise InputError(
                f"labels were given but output {main!r} has shape {logits.shape}; task accuracy needs (N, classes) "
                "scores: pick the logits output with --output-name, or drop the labels"
            )
        check_labels(data.labels, logits.shape[1], data.origin, main)
        acc = {"top1": accuracy(logits, data.labels, 1)}
        if logits.shape[1] > 5:
            acc["top5"] = accuracy(logits, data.labels, 5)
        res["accuracy"] = acc
    if ref is not None:
        if set(ref) != set(outputs):
            raise InputError(f"the reference model's outputs {sorted(ref)} differ from the model's {sorted(outputs)}; pass the FP32 model it came from")
        fid = {}
        for name, cand in outputs.items():
            r = ref[name]
            if r.shape != cand.shape:
                raise InputError(f"output {name!r}: reference shape {r.shape} differs from the model's {cand.shape}")
            f = fidelity(r, cand.astype(np.float64))
            f["mse"] = float(np.mean((np.asarray(r, np.float64) - np.asarray(cand, np.float64)) ** 2)) if r.size else 0.0
            fid[name] = f
        res["fidelity"] = fid
    return res


def headline(metrics: dict[str, Any], metric: str) -> float:
    """The value of ``metric`` from :func:`eval_metrics` output (see :func:`onnxq.verdict.metric_value`)."""
    from .verdict import metric_value

    return metric_value(metrics, metric)


PREFERRED_OUTPUTS = ("sentence_embedding", "embedding", "pooler_output", "pooled", "logits", "probabilities", "scores")
HIDDEN_OUTPUTS = ("last_hidden_state", "hidden_state", "hidden_states", "attentions")


def choose_output(outputs: dict[str, np.ndarray], output_name: str | None = None) -> tuple[str, str]:
    """(output to judge, why): the named one, else the one a user judges (an embedding, pooled or logits output
    before a hidden state), else the first."""
    names = list(outputs)
    if output_name is not None:
        if output_name not in outputs:
            raise InputError(f"the model has no output {output_name!r}; its outputs are {names}: pick one with --output-name")
        return output_name, "--output-name"
    if len(names) == 1:
        return names[0], "the only output"
    for pref in PREFERRED_OUTPUTS:
        for n in names:
            if pref in n.lower():
                return n, f"named like {pref!r} (of {names}; --output-name picks another)"
    plain = [n for n in names if not any(h in n.lower() for h in HIDDEN_OUTPUTS)]
    two_d = [n for n in plain if np.asarray(outputs[n]).ndim == 2]
    if two_d:
        return two_d[0], f"the first (N, features) output that is not a hidden state (of {names}; --output-name picks another)"
    return names[0], f"the first output (of {names}; --output-name picks another)"
