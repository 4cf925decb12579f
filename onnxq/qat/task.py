"""``onnxq qat TASK``: FP32, PTQ static and QAT of one network, trained and measured side by side.

>>> from onnxq.qat import run_task
>>> res = run_task("examples/fashion_mnist/qat_task.py:TASK", "cpu-x86-vnni", "out/fashion.qat.onnx", epochs=1)  # doctest: +SKIP
>>> res["accuracy"]                                                                                         # doctest: +SKIP
{'fp32': 0.904, 'ptq_static': 0.9034, 'qat': 0.9051, 'qat_torch': 0.9049}

A task is a small user-written spec, named ``module:object`` or ``path/to/file.py:object``: a
:class:`QATTask`, a function returning one, or any object with the same attributes::

    TASK = QATTask(
        model=load_trained_fp32,        # () -> nn.Module, the trained FP32 network
        train_data=train_batches,       # () -> iterable of (x, y) batches (torch tensors)
        eval_data=test_batches,         # () -> iterable of (x, y) batches
        calibration=None,               # () -> PTQ calibration source; default: first train samples
        loss=None,                      # (logits, y) -> scalar tensor; default cross-entropy
        metric=None,                    # (logits ndarray, y ndarray) -> float; default top-1 accuracy
        lr=1e-4, epochs=1,              # Adam, cosine-annealed to 0 over the QAT steps
    )
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .._fs import check_output, staged_folder
from ..errors import InputError
from ..manifest import manifest_path
from ..evaluate import accuracy as top1_accuracy
from ..evaluate import fidelity

__all__ = ["QATTask", "load_task", "run_task", "train_qat", "step_times"]

STEP_TIMING_STEPS = 20


@dataclass
class QATTask:
    """What ``onnxq qat`` needs to know about a network: see the module docstring."""

    model: Callable[[], Any]
    train_data: Callable[[], Iterable]
    eval_data: Callable[[], Iterable]
    calibration: Callable[[], Any] | None = None
    loss: Callable | None = None
    metric: Callable | None = None
    metric_name: str = "top-1 accuracy"
    example_inputs: Callable[[], Any] | None = None
    optimizer: Callable | None = None  # (params, lr) -> torch optimizer; default Adam
    lr: float = 1e-4
    lr_schedule: str = "cosine"  # "cosine" (decay to 0 over the QAT steps) or "constant"
    epochs: int = 1
    name: str = ""
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extra prepare() keywords (weight_type, freeze_after, ...)

    @classmethod
    def from_object(cls, obj: Any, origin: str, _depth: int = 0) -> "QATTask":
        """A QATTask, a no-argument callable returning one, or any object with its attributes."""
        if isinstance(obj, cls):
            return obj
        if callable(obj) and not hasattr(obj, "train_data") and _depth < 2:
            try:
                made = obj()
            except InputError:
                raise
            except TypeError as e:
                raise InputError(f"task {origin} is a callable that needs arguments ({e}); name a QATTask or a "
                                 "function taking none") from e
            except Exception as e:
                raise InputError(f"task {origin} raised while building: {type(e).__name__}: {e}") from e
            return cls.from_object(made, origin, _depth + 1)
        missing = [a for a in ("model", "train_data", "eval_data") if not hasattr(obj, a)]
        if missing:
            raise InputError(
                f"task {origin} lacks {', '.join(missing)}; a QAT task needs model (a factory returning the trained FP32 "
                "nn.Module), train_data and eval_data (callables returning iterables of (x, y) batches)"
            )
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls) if hasattr(obj, f.name)})


def load_task(spec: str | QATTask) -> QATTask:
    """Resolve ``module:object`` / ``path/to/file.py:object`` into a :class:`QATTask`."""
    if isinstance(spec, QATTask):
        return spec
    from ..usercode import load_object

    obj = load_object(spec)
    task = QATTask.from_object(obj, str(spec))
    if not task.name:
        task.name = str(spec)
    return task


def _call(fn: Any, what: str):
    if not callable(fn):
        return fn
    try:
        return fn()
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"the task's {what}() raised {type(e).__name__}: {e}") from e


def _split_batch(batch: Any, torch, n_inputs: int) -> tuple[tuple, Any]:
    if isinstance(batch, dict):
        raise InputError("train/eval batches must be (x, y) tuples, got a dict")
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise InputError(f"train/eval batches must be (x, y) tuples (x may be a tuple of inputs), got {type(batch).__name__}")
    x, y = (batch[0], batch[1]) if n_inputs == 1 or not isinstance(batch[0], (tuple, list)) else (tuple(batch[0]), batch[1])
    xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    xs = tuple(torch.as_tensor(v) for v in xs)
    return xs, torch.as_tensor(y)


def _gather_calibration(task: QATTask, calibration: Any, names: list[str], count: int, torch) -> Any:
    if calibration is not None:
        return calibration
    if task.calibration is not None:
        return _call(task.calibration, "calibration")
    collected: list[list[np.ndarray]] = [[] for _ in names]
    total = 0
    for batch in _call(task.train_data, "train_data"):
        xs, _ = _split_batch(batch, torch, len(names))
        for i, t in enumerate(xs):
            collected[i].append(t.detach().cpu().numpy())
        total += len(xs[0])
        if total >= count:
            break
    if total == 0:
        raise InputError("the task's train_data yielded no batches; it is needed for calibration")
    return {n: np.concatenate(c)[:count] for n, c in zip(names, collected)}


def _eval_arrays(task: QATTask, torch, n_inputs: int) -> tuple[list[np.ndarray], np.ndarray]:
    xs_all: list[list[np.ndarray]] = [[] for _ in range(n_inputs)]
    ys = []
    for batch in _call(task.eval_data, "eval_data"):
        xs, y = _split_batch(batch, torch, n_inputs)
        for i, t in enumerate(xs):
            xs_all[i].append(t.detach().cpu().numpy())
        ys.append(y.detach().cpu().numpy())
    if not ys:
        raise InputError("the task's eval_data yielded no batches")
    return [np.concatenate(x) for x in xs_all], np.concatenate(ys)


def _metric(task: QATTask, logits: np.ndarray, labels: np.ndarray) -> float:
    if task.metric is None:
        return top1_accuracy(logits, labels)
    try:
        return float(task.metric(logits, labels))
    except Exception as e:
        raise InputError(f"the task's metric raised {type(e).__name__}: {e}") from e


def _onnx_logits(path: Path, prof, names: list[str], xs: list[np.ndarray], batch: int = 256) -> np.ndarray:
    from ..runtime import make_session

    sess, _ = make_session(path, prof, allow_fallback=True)
    outs = []
    for s in range(0, len(xs[0]), batch):
        outs.append(sess.run(None, {n: x[s : s + batch] for n, x in zip(names, xs)})[0])
    return np.concatenate(outs)


def _torch_logits(net, xs: list[np.ndarray], torch, batch: int = 256) -> np.ndarray:
    was = net.training
    net.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(xs[0]), batch):
            out = net(*[torch.from_numpy(x[s : s + batch]) for x in xs])
            out = out[0] if isinstance(out, (tuple, list)) else out
            outs.append(out.detach().cpu().numpy())
    net.train(was)
    return np.concatenate(outs)


def _loss_fn(task: QATTask, torch):
    if task.loss is not None:
        return task.loss
    return torch.nn.functional.cross_entropy


def _step(net, opt, loss_fn, xs, y, torch, step: int) -> float:
    opt.zero_grad(set_to_none=True)
    out = net(*xs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    loss = loss_fn(out, y)
    value = float(loss.detach())
    if not math.isfinite(value):
        from ._fakequant import NonFiniteError

        bad = [i for i, x in enumerate(xs) if x.is_floating_point() and not bool(torch.isfinite(x).all())]
        if bad:
            raise NonFiniteError(f"training batch {step} holds NaN/inf in input {bad[0]}: clean the task's train_data; "
                                 "nothing was exported")
        raise NonFiniteError(f"the training loss is {value} at step {step}: training diverged; lower the learning rate "
                             "(--lr) or check the data; nothing was exported")
    loss.backward()
    opt.step()
    return value


def _optimizer(task: QATTask, params, lr: float, torch):
    if task.optimizer is not None:
        return task.optimizer(params, lr)
    return torch.optim.Adam(params, lr=lr)


def train_qat(net, task: QATTask, epochs: int, lr: float, torch, *, progress: bool = True, n_inputs: int = 1) -> dict[str, Any]:
    """The default QAT fine-tuning loop: ``epochs`` passes over ``train_data`` with a per-epoch bar."""
    from tqdm import tqdm

    opt = _optimizer(task, [p for p in net.parameters() if p.requires_grad], lr, torch)
    loss_fn = _loss_fn(task, torch)
    if task.lr_schedule not in ("cosine", "constant"):
        raise InputError(f"the task's lr_schedule must be 'cosine' or 'constant', got {task.lr_schedule!r}")
    first = _call(task.train_data, "train_data")
    per_epoch = len(first) if hasattr(first, "__len__") else None
    sched = None
    if task.lr_schedule == "cosine" and per_epoch and epochs:
        # fine-tuning a converged network: annealing to 0 keeps QAT from drifting off (measured on Fashion-MNIST)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=per_epoch * epochs)
    net.train()
    step, times, history = 0, [], []
    for epoch in range(epochs):
        data = first if epoch == 0 else _call(task.train_data, "train_data")
        total = len(data) if hasattr(data, "__len__") else None
        bar = tqdm(data, total=total, desc=f"QAT epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=True)
        running = 0.0
        for i, batch in enumerate(bar):
            xs, y = _split_batch(batch, torch, n_inputs)
            t0 = time.perf_counter()
            running += _step(net, opt, loss_fn, xs, y, torch, step)
            times.append(time.perf_counter() - t0)
            if sched is not None:
                sched.step()
            step += 1
            if i % 20 == 0:
                bar.set_postfix(loss=f"{running / (i + 1):.4f}")
        bar.close()
        history.append(running / max(1, i + 1))
    net.eval()
    return {"steps": step, "step_s": float(np.median(times)) if times else None, "loss_per_epoch": history}


def step_times(fp32, net, task: QATTask, lr: float, torch, n_inputs: int = 1, steps: int = STEP_TIMING_STEPS) -> dict[str, float | None]:
    """Median training-step time of FP32 and of the QAT model, interleaved step by step on throw-away copies.

    Interleaving (and alternating which goes first) keeps a busy machine from favouring either side.
    """
    nets = {"fp32": copy.deepcopy(fp32).train(), "qat": copy.deepcopy(net).train()}
    opts = {k: _optimizer(task, [p for p in m.parameters() if p.requires_grad], lr, torch) for k, m in nets.items()}
    loss_fn = _loss_fn(task, torch)
    times: dict[str, list[float]] = {"fp32": [], "qat": []}
    for i, batch in enumerate(_call(task.train_data, "train_data")):
        if i >= steps + 2:
            break
        xs, y = _split_batch(batch, torch, n_inputs)
        for k in (("fp32", "qat") if i % 2 == 0 else ("qat", "fp32")):
            t0 = time.perf_counter()
            _step(nets[k], opts[k], loss_fn, xs, y, torch, i)
            if i >= 2:  # warm-up
                times[k].append(time.perf_counter() - t0)
    return {k: (float(np.median(v)) if v else None) for k, v in times.items()}


def _task_file(task_spec: Any) -> Path | None:
    """The file a ``path/to/file.py:object`` task spec names (an input the outputs may not overwrite)."""
    if isinstance(task_spec, str) and ":" in task_spec:
        head = task_spec.rsplit(":", 1)[0]
        if head.endswith(".py"):
            return Path(head)
    return None


def _unstaged(value: Any, stage: Path, final: Path) -> Any:
    """``value`` with every path string under the staging folder pointing at the final folder."""
    if isinstance(value, str):
        return value.replace(str(stage), str(final))
    if isinstance(value, dict):
        return {k: _unstaged(v, stage, final) for k, v in value.items()}
    if isinstance(value, list):
        return [_unstaged(v, stage, final) for v in value]
    return value


def run_task(
    task_spec: str | QATTask,
    profile: Any = "auto",
    out_path: str | os.PathLike = "model.qat.onnx",
    calibration: Any = None,
    epochs: int | None = None,
    *,
    lr: float | None = None,
    weight_type: str | None = None,
    per_channel: bool | None = None,
    freeze_after: int | None = None,
    ranges: str = "ema",
    seed: int = 0,
    progress: bool = True,
    measure_step_time: bool = True,
    keep_model: bool = False,
    control: bool = True,
    allow_fallback: bool = False,
) -> dict[str, Any]:
    """Run FP32 export, PTQ static and QAT for a task; return paths and accuracies side by side.

    >>> res = run_task("examples/fashion_mnist/qat_task.py:TASK", "cpu-x86-vnni", "fm.qat.onnx", epochs=1)  # doctest: +SKIP
    >>> res["model_path"], res["fp32_model_path"], res["ptq_model_path"]                              # doctest: +SKIP
    ('fm.qat.onnx', 'fm.fp32.onnx', 'fm.ptq.onnx')

    Writes ``out_path`` (the QAT QDQ model) and, beside it, ``STEM.fp32.onnx`` (the trained-from FP32
    network), ``STEM.ptq.onnx`` (PTQ static of it with the same profile and calibration data) and, with
    ``control``, ``STEM.fp32-control.onnx``: the FP32 network fine-tuned with exactly QAT's steps, data
    order, optimizer and schedule (same seed), so a QAT gain can be told apart from a training gain.
    Each has its manifest. ``freeze_after`` defaults to half of the QAT steps. ``keep_model`` adds
    the trained fake-quant module as ``res["qat_module"]``, the FP32 one as ``res["fp32_module"]``, the
    example inputs and the eval arrays (none of them JSON-serialisable).
    """
    from ..torch_export import export as export_fp32
    from ..torch_export import require_torch
    from ..plan import HOLDOUT
    from ..ptq import quantize as ptq_quantize
    from ..runtime import require_providers, resolve_profile
    from ._api import export as qat_export
    from ._api import prepare

    torch = require_torch()
    t0 = time.perf_counter()
    task = load_task(task_spec)
    prof, _why = resolve_profile(profile)
    missing = require_providers(prof, allow_fallback, "measures the FP32, PTQ and QAT models' accuracy on them")
    out = Path(out_path)
    if out.suffix != ".onnx":
        raise InputError(f"output {out} should end in .onnx")
    stem = out.name[: -len(".onnx")]
    fp32_path = out.with_name(f"{stem}.fp32.onnx")
    ptq_path = out.with_name(f"{stem}.ptq.onnx")
    epochs = task.epochs if epochs is None else int(epochs)
    if epochs < 0:
        raise InputError(f"--epochs must be 0 or more, got {epochs}")
    lr = float(task.lr if lr is None else lr)
    if not lr > 0:
        raise InputError(f"--lr must be positive, got {lr}")
    torch.manual_seed(seed)
    fp32 = _call(task.model, "model")
    if not isinstance(fp32, torch.nn.Module):
        raise InputError(f"the task's model() returned a {type(fp32).__name__}, expected a torch.nn.Module")
    fp32.eval()
    if task.example_inputs is not None:
        ex = _call(task.example_inputs, "example_inputs")
        ex = ex if isinstance(ex, (tuple, list)) else (ex,)
    else:
        first = next(iter(_call(task.train_data, "train_data")), None)
        if first is None:
            raise InputError("the task's train_data yielded no batches")
        ex = tuple(t[:1] for t in _split_batch(first, torch, 1)[0])
    ex = tuple(torch.as_tensor(t) for t in ex)
    names = list(task.input_names or (["input"] if len(ex) == 1 else [f"input_{i}" for i in range(len(ex))]))
    out_names = list(task.output_names or ["logits"])
    calib = _gather_calibration(task, calibration, names, prof.quant.calibration_samples + HOLDOUT, torch)
    xs_eval, y_eval = _eval_arrays(task, torch, len(names))

    # every file of the run is written in a staging folder beside OUT and moves into place only when all
    # succeeded: a failure (NaN in the data, a diverging run, Ctrl-C) leaves nothing behind
    control_final = out.with_name(f"{stem}.fp32-control.onnx")
    user_inputs = [calibration if isinstance(calibration, (str, os.PathLike)) else None, _task_file(task_spec)]
    for p in (out, fp32_path, ptq_path, control_final):
        check_output(p, inputs=user_inputs)
        check_output(manifest_path(p), inputs=user_inputs, what="manifest")
    final_dir = out.parent
    with staged_folder(final_dir) as stage:
        out, fp32_path, ptq_path = (stage / p.name for p in (out, fp32_path, ptq_path))
        # the task's options, overridden by explicit arguments; PTQ gets the same weight scheme as QAT
        opts = dict(task.options)
        opts.update({k: v for k, v in {"weight_type": weight_type, "per_channel": per_channel}.items() if v is not None})
        # FP32 and PTQ static of the trained-from network
        export_fp32(fp32, ex, fp32_path, profile=prof, input_names=names, output_names=out_names)
        ptq_res = ptq_quantize(fp32_path, mode="static", profile=prof, calibration=calib, output=ptq_path,
                               weight_type=opts.get("weight_type"), per_channel=opts.get("per_channel"), progress=progress,
                               allow_fallback=allow_fallback)
        # QAT
        train_data = _call(task.train_data, "train_data")
        steps_per_epoch = len(train_data) if hasattr(train_data, "__len__") else None
        if freeze_after is None:
            freeze_after = opts.pop("freeze_after", None)
            if freeze_after is None:
                freeze_after = max(1, (steps_per_epoch or 500) * max(1, epochs) // 2)
        opts.pop("freeze_after", None)
        net = prepare(fp32, profile=prof, example_inputs=ex, calibration=calib, input_names=names, output_names=out_names,
                      freeze_after=freeze_after, ranges=ranges, progress=progress, **opts)
        initial = net.onnxq_qat.initial_fidelity
        times: dict[str, float | None] = {}
        if measure_step_time:
            times = step_times(fp32, net, task, lr, torch, len(names))
        torch.manual_seed(seed + 1)  # the data order QAT and its FP32 control both see
        train_info = train_qat(net, task, epochs, lr, torch, progress=progress, n_inputs=len(names))
        qres = qat_export(net, ex, out)
        control_path = None
        if control:
            control_path = stage / control_final.name
            twin = copy.deepcopy(fp32)
            torch.manual_seed(seed + 1)
            control_info = train_qat(twin, task, epochs, lr, torch, progress=progress, n_inputs=len(names))
            export_fp32(twin, ex, control_path, profile=prof, input_names=names, output_names=out_names)

        # accuracy side by side on the eval data
        logits = {
            "fp32": _onnx_logits(fp32_path, prof, names, xs_eval),
            "ptq_static": _onnx_logits(ptq_path, prof, names, xs_eval),
            "qat": _onnx_logits(out, prof, names, xs_eval),
            "qat_torch": _torch_logits(net, xs_eval, torch),
        }
        if control_path is not None:
            logits["fp32_control"] = _onnx_logits(control_path, prof, names, xs_eval)
        acc = {k: _metric(task, v, y_eval) for k, v in logits.items()}
        agree = fidelity(logits["qat_torch"], logits["qat"])
        ratio = (times["qat"] / times["fp32"]) if times.get("qat") and times.get("fp32") else None
        res = {
            "task": task.name,
            "profile": prof.name,
            "model_path": str(out),
            "manifest": str(qres.manifest) if qres.manifest else None,
            "fp32_model_path": str(fp32_path),
            "ptq_model_path": str(ptq_path),
            "fp32_control_model_path": str(control_path) if control_path else None,
            "fp32_control_train": control_info if control_path else None,
            "metric": task.metric_name,
            "accuracy": acc,
            "eval_samples": int(len(y_eval)),
            "agreement_torch_vs_onnx": agree.get("top1_agreement"),
            "fidelity_torch_vs_onnx": agree,
            "initial_fidelity_torch_vs_onnx": initial,
            "epochs": epochs,
            "lr": lr,
            "freeze_after": freeze_after,
            "weight_type": qres.recipe["weight_type"],
            "per_channel": qres.recipe["per_channel"],
            "train": train_info,
            "step_time_s": times,
            "step_time_ratio": ratio,
            "fused": qres.fused,
            "quantized_tensors": qres.quantized_tensors,
            "sizes": {"fp32": fp32_path.stat().st_size, "ptq_static": ptq_res.size_after, "qat": qres.size},
            "ptq_warnings": ptq_res.warnings,
            "warnings": qres.warnings,
            "wall_s": time.perf_counter() - t0,
        }
    res = _unstaged(res, stage, final_dir)
    if missing:  # --allow-fallback: every accuracy above ran on the available providers, and says so
        res["providers"] = {"requested": list(prof.runtime.providers), "missing": missing, "fallback": True}
        res["warnings"] = [f"FALLBACK: {', '.join(missing)} missing; every accuracy was measured on the available providers "
                           "(CPUExecutionProvider)"] + list(res["warnings"])
    else:
        res["providers"] = {"requested": list(prof.runtime.providers), "missing": [], "fallback": False}
    if keep_model:
        res["qat_module"] = net
        res["fp32_module"] = fp32
        res["example_inputs"] = ex
        res["eval_arrays"] = (xs_eval, y_eval)
    return res
