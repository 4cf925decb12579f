"""Keras in, measured INT8 out: train a Keras CNN on Fashion-MNIST, export it with onnxq, compare, and set TFLite fp16 beside it.

    python examples/keras_fashion_mnist/train_and_compare.py            # about 3-5 minutes on 2 shared CPU cores
    python examples/keras_fashion_mnist/train_and_compare.py --epochs 3 --runs 200

Needs the tf extra (``pip install "onnxq[tf]"``) and the Fashion-MNIST files
(``apt-get install dataset-fashion-mnist``).

1. trains ``keras_model.make_model()`` (NHWC, Conv-BN-ReLU x3, 24k parameters) for 2 epochs with fixed
   seeds, deterministic ops and 1 TensorFlow thread (``--tf-threads``), and saves ``out/fashion_keras.keras``;
2. ``onnxq.tf_export.export_keras`` -> ``out/fashion_keras.onnx`` (NHWC kept, dynamic batch, parity vs TF);
3. writes ``out/calib.npz`` (the first 288 training images, as the PyTorch example) and ``out/eval.npz``
   (all 10,000 test images + ``labels``), NHWC float32 keyed ``input``;
4. runs onnxq compare (fp32, fp16, static per-channel percentile, dynamic; profile cpu-x86-vnni) into
   ``compare/`` (report.md, report.json, pareto.png; the variant models under ``compare/<profile>/``);
5. quantizes fp16 and static INT8 (the profile's recipe) with ``onnxq.quantize`` and computes accuracy on
   the full test set directly with onnxruntime, next to Keras' own accuracy;
6. converts the Keras model with the classic TFLite float16 recipe and measures its accuracy
   (``tf.lite.Interpreter``) and size in the same run;
7. writes ``RESULTS.md`` and ``results.json`` (strict JSON) beside this file and prints the table.

The machine may be shared: wall times and the load average are recorded with the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "out"  # git-ignored (examples/*/out/)
CALIB_SAMPLES = 288  # the profile's 256 calibration samples + onnxq's 32 held-out ones
PROFILE = "cpu-x86-vnni"
VARIANTS = ["fp16", "static-pc-percentile", "dynamic"]
EVAL_BATCH = 500

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


def _say(msg: str) -> None:
    print(f"[keras_fashion_mnist] {msg}", file=sys.stderr, flush=True)


def _rel(p: Path | str) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------
# 1. Keras training


def train(epochs: int, seed: int, threads: int, batch: int = 64, lr: float = 3e-3):
    from onnxq.tf_export import require_tf

    tf, _ = require_tf()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from keras_model import load_nhwc, make_model

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    x_train, y_train = load_nhwc("train")
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress lines: stdout keeps the tables only
        hist = model.fit(x_train, y_train, batch_size=batch, epochs=epochs, shuffle=True, verbose=2)
    train_s = time.perf_counter() - t0
    return model, {"epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "tf_threads": threads, "wall_s": round(train_s, 1),
                   "train_accuracy": [round(float(a), 4) for a in hist.history["accuracy"]],
                   "params": int(model.count_params())}


def keras_accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, batch_size=EVAL_BATCH, verbose=0)
    return float((logits.argmax(1) == y).mean())


# ---------------------------------------------------------------------------------------------
# 3. data files


def write_data(input_name: str) -> tuple[Path, Path]:
    from keras_model import load_nhwc

    x_train, _ = load_nhwc("train")
    x_test, y_test = load_nhwc("test")
    paths = (OUT / "calib.npz", OUT / "eval.npz")
    for path, arrays in zip(paths, ({input_name: x_train[:CALIB_SAMPLES]}, {input_name: x_test, "labels": y_test})):
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return paths


# ---------------------------------------------------------------------------------------------
# 4. onnxq compare: one small function, so a change in compare's API is fixed here only


def run_compare(model: Path, calib: Path, evald: Path, outdir: Path, *, runs: int, threads: int = 1) -> dict:
    from onnxq.compare import compare

    kwargs = dict(calib=calib, eval_data=evald, outdir=outdir, profiles=[PROFILE], variants=VARIANTS, runs=runs, warmup=10,
                  threads=threads, labels_key="labels", batches=(1, 32))
    if "fresh" in inspect.signature(compare).parameters:
        kwargs["fresh"] = True  # a retrained model replaces the previous report
    return compare(model, **kwargs)


def compare_rows(doc: dict) -> list[dict]:
    rows = []
    for v in doc["profiles"][0]["variants"]:
        acc = ((v.get("metrics") or {}).get("accuracy") or {}).get("top1")
        lat = v.get("latency") or {}
        rows.append({
            "variant": v["name"], "status": v.get("status"), "top1": acc, "size_bytes": v.get("size_bytes"),
            "median_ms_b1": (lat.get("1") or lat.get(1) or {}).get("median_ms"),
            "median_ms_b32": (lat.get("32") or lat.get(32) or {}).get("median_ms"),
            "speedup_b32": (v.get("speedup") or {}).get("32", (v.get("speedup") or {}).get(32)),
            "error": v.get("error"),
        })
    return rows


# ---------------------------------------------------------------------------------------------
# 5. onnxruntime accuracy on the full test set, computed here


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray, input_name: str) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    preds = [sess.run(None, {input_name: x[i:i + EVAL_BATCH]})[0].argmax(1) for i in range(0, len(x), EVAL_BATCH)]
    return float((np.concatenate(preds) == y).mean())


def quantize_variants(fp32: Path, calib: Path) -> dict[str, Path]:
    import onnxq

    out = {"fp32": fp32}
    for name, mode in (("fp16", "fp16"), ("int8", "static"), ("dynamic", "dynamic")):
        path = OUT / f"fashion_keras.{name}.onnx"
        onnxq.quantize(fp32, mode=mode, profile=PROFILE, calibration=calib, output=path, progress=False)
        out[name] = path
    return out


# ---------------------------------------------------------------------------------------------
# 6. TFLite float16, the classic recipe


def tflite_fp16(model, x: np.ndarray, y: np.ndarray) -> dict:
    import warnings

    import tensorflow as tf

    t0 = time.perf_counter()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints its temporary SavedModel's signature
        blob = conv.convert()
    convert_s = time.perf_counter() - t0
    path = OUT / "fashion_keras.fp16.tflite"
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated in favour of ai_edge_litert
        it = tf.lite.Interpreter(model_content=blob, num_threads=1)
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], [EVAL_BATCH, *x.shape[1:]])
    it.allocate_tensors()
    preds = []
    for i in range(0, len(x), EVAL_BATCH):
        it.set_tensor(inp["index"], x[i:i + EVAL_BATCH])
        it.invoke()
        preds.append(it.get_tensor(outp["index"]).argmax(1))
    return {"path": _rel(path), "size_bytes": len(blob), "top1": float((np.concatenate(preds) == y).mean()),
            "convert_s": round(convert_s, 2)}


# ---------------------------------------------------------------------------------------------
# 7. report


def _ops(path: Path) -> dict[str, int]:
    import collections

    import onnx

    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def _shape(shapes: dict) -> str:
    return ", ".join(f"{k} {'x'.join(str(d) for d in v)}" for k, v in shapes.items())


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _kb(v) -> str:
    return "-" if v is None else f"{v / 1024:.1f} KiB"


def render(res: dict) -> tuple[str, str]:
    lines = ["| model | accuracy (10k test) | size |", "|---|---|---|"]
    lines.append(f"| Keras (TensorFlow, FP32) | {_pct(res['keras']['top1'])} | {_kb(res['keras']['size_bytes'])} (.keras) |")
    for name, label in (("fp32", "ONNX FP32 (export_keras)"), ("fp16", "ONNX fp16 (onnxq quantize --mode fp16)"),
                        ("int8", f"ONNX INT8 static (onnxq, {PROFILE} recipe)"), ("dynamic", "ONNX INT8 dynamic (onnxq)")):
        r = res["onnxruntime"][name]
        lines.append(f"| {label} | {_pct(r['top1'])} | {_kb(r['size_bytes'])} |")
    t = res["tflite_fp16"]
    lines.append(f"| TFLite float16 (TFLiteConverter, Optimize.DEFAULT + float16) | {_pct(t['top1'])} | {_kb(t['size_bytes'])} |")
    table = "\n".join(lines)
    crow = ["| variant | top-1 | size | median ms b1 | median ms b32 | speed-up b32 |", "|---|---|---|---|---|---|"]
    for r in res["compare"]["variants"]:
        if r["status"] != "ok":
            crow.append(f"| {r['variant']} | failed: {r['error']} | | | | |")
            continue
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        crow.append(f"| {r['variant']} | {_pct(r['top1'])} | {_kb(r['size_bytes'])} | {fmt(r['median_ms_b1'], '.3f')} | "
                    f"{fmt(r['median_ms_b32'], '.3f')} | {fmt(r['speedup_b32'], '.2f')}x |")
    return table, "\n".join(crow)


def write_results(res: dict) -> None:
    table, ctable = render(res)
    p = res["export"]["parity"]
    text = f"""# Keras Fashion-MNIST: export, quantize, compare (measured)

Written by `python examples/keras_fashion_mnist/train_and_compare.py` on {res['host']['created']}
({res['host']['cpus']} CPU cores, shared; load average {res['host']['load_start']} at start, {res['host']['load_end']} at the end;
TensorFlow {res['versions']['tensorflow']}, Keras {res['versions']['keras']}, tf2onnx {res['versions']['tf2onnx']},
onnxruntime {res['versions']['onnxruntime']}). Total wall time {res['wall_s']:.0f} s.

Training: {res['train']['epochs']} epochs, batch {res['train']['batch']}, Adam lr {res['train']['lr']:g}, seed {res['train']['seed']}, {res['train']['tf_threads']}
TensorFlow thread(s), {res['train']['wall_s']:.0f} s, {res['train']['params']} parameters (NHWC, Conv-BN-ReLU x3).

Export (`onnxq.tf_export.export_keras`, {res['export']['exporter']}, opset {res['export']['opset']}): input
`{_shape(res['export']['input_shapes'])}` (NHWC, as the Keras model), output `{_shape(res['export']['output_shapes'])}`;
parity vs TensorFlow on random inputs at batches {p['batches']}: max-abs {p['max_abs']:.3g}, cosine {p['cosine']:.7f}.
FP32 graph: {', '.join(f"{k} {v}" for k, v in res['export']['ops'].items())} (tf2onnx folded the BatchNorms into the
convolutions; the 1-channel NHWC input becomes NCHW through a Reshape).

## Accuracy on the full 10,000-image test set (onnxruntime CPU, computed directly; TFLite via tf.lite.Interpreter)

{table}

## onnxq compare ({PROFILE}, 1 thread; report in `compare/report.md`)

{ctable}

Verdict: {res['compare']['verdict']}
"""
    (HERE / "RESULTS.md").write_text(text, encoding="utf-8")
    (HERE / "results.json").write_text(json.dumps(res, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    ap.add_argument("--tf-threads", type=int, default=1, help="TensorFlow intra-op threads for training (default 1)")
    ap.add_argument("--runs", type=int, default=100, help="timed runs per variant and batch in compare (default 100)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    load0 = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    from onnxq.tf_export import export_keras, require_tf

    tf, tf2onnx = require_tf()
    import keras
    import onnxruntime

    import onnxq
    from keras_model import load_nhwc

    _say(f"training {args.epochs} epoch(s), {args.tf_threads} TF thread(s)")
    model, train_info = train(args.epochs, args.seed, args.tf_threads, args.batch, args.lr)
    keras_path = OUT / "fashion_keras.keras"
    model.save(keras_path)
    x_test, y_test = load_nhwc("test")
    keras_top1 = keras_accuracy(model, x_test, y_test)
    _say(f"trained in {train_info['wall_s']} s; Keras test accuracy {100 * keras_top1:.2f}")

    fp32 = OUT / "fashion_keras.onnx"
    exp = export_keras(model, fp32, profile=PROFILE)
    _say(f"exported {_rel(fp32)}: {exp.input_shapes}, parity {exp.parity}")
    name = exp.input_names[0]
    calib, evald = write_data(name)

    paths = quantize_variants(fp32, calib)
    ort_res = {k: {"path": _rel(p), "size_bytes": p.stat().st_size, "top1": ort_accuracy(p, x_test, y_test, name)}
               for k, p in paths.items()}
    _say("onnxruntime accuracy: " + ", ".join(f"{k} {100 * v['top1']:.2f}" for k, v in ort_res.items()))

    tfl = tflite_fp16(model, x_test, y_test)
    _say(f"TFLite fp16: {100 * tfl['top1']:.2f}, {tfl['size_bytes']} bytes")

    _say(f"onnxq compare -> {_rel(HERE / 'compare')}")
    tc = time.perf_counter()
    doc = run_compare(fp32, calib, evald, HERE / "compare", runs=args.runs)
    compare_s = time.perf_counter() - tc

    res = {
        "schema": "onnxq.example.keras_fashion_mnist/1",
        "host": {"created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "machine": platform.machine(),
                 "load_start": "/".join(f"{x:.1f}" for x in load0), "load_end": "/".join(f"{x:.1f}" for x in os.getloadavg())},
        "versions": {"onnxq": onnxq.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "tf2onnx": tf2onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "train": train_info,
        "keras": {"path": _rel(keras_path), "size_bytes": keras_path.stat().st_size, "top1": keras_top1},
        "export": {"path": _rel(fp32), "opset": exp.opset, "ops": _ops(fp32), "exporter": exp.exporter, "input_shapes": exp.input_shapes,
                   "output_shapes": exp.output_shapes, "parity": exp.parity[exp.output_names[0]], "wall_s": round(exp.wall_s, 2)},
        "data": {"calib": _rel(calib), "calib_samples": CALIB_SAMPLES, "eval": _rel(evald), "eval_samples": int(len(y_test))},
        "onnxruntime": ort_res,
        "tflite_fp16": tfl,
        "compare": {"profile": PROFILE, "variants": compare_rows(doc), "verdict": (doc["profiles"][0].get("verdict") or {}).get("text"),
                    "report": _rel(HERE / "compare" / "report.md"), "wall_s": round(compare_s, 1)},
    }
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    write_results(res)
    table, ctable = render(res)
    print(table)
    print()
    print(ctable)
    print(f"\nverdict: {res['compare']['verdict']}")
    print(f"\nwall time {res['wall_s']:.0f} s (training {train_info['wall_s']:.0f} s, compare {compare_s:.0f} s); "
          f"load average {res['host']['load_start']} -> {res['host']['load_end']}; wrote {_rel(HERE / 'RESULTS.md')}, "
          f"{_rel(HERE / 'results.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
