"""QAT benchmark: accuracy FP32 / PTQ static / QAT, CPU latency QAT vs PTQ, training step time,
and the two QAT export routes measured against each other.

    python benchmarks/bench_qat.py                    # full: 1 QAT epoch per task (~10-20 min on 2 busy cores)
    python benchmarks/bench_qat.py --train-limit 12800 --runs 100   # quicker (100 QAT steps per task)

Writes ``benchmarks/results/qat.md`` and ``qat.json`` (``--out`` to change). Cases:

* Fashion-MNIST CNN (examples/fashion_mnist/qat_task.py:TASK), INT8, profile cpu-x86-vnni.
* Hard case (examples/hard_case/qat_task.py): a depthwise-separable CNN with ONE weight scale per
  tensor (int8), where PTQ loses >20 points, and the same network with int4 weights per channel.

Latency: onnxq.bench (interleaved A B / B A rounds, 1 intra-op thread, batch 1 and 32) on the CPU
provider. Step time: interleaved FP32 / QAT training steps on throw-away copies (1 torch thread).
Route comparison: the QAT model exported directly with its fake-quant ops (TorchScript exporter,
Q/DQ written by PyTorch) against onnxq's route (float graph + learned ranges handed to
onnxruntime's QDQ quantizer): fusion in onnxruntime's optimized graph, latency, agreement with
the PyTorch fake-quant model, and Q/DQ placement compared with PTQ static.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from onnxq.results import to_jsonable  # strict JSON: inf/NaN as strings, as onnxq's results files

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "cpu-x86-vnni"
INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "QGemm", "ConvInteger", "QLinearAdd",
                   "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearMul"}


def optimized_ops(path: Path, tmp: Path) -> dict[str, dict[str, int]]:
    """Integer kernels and float compute nodes fed by DequantizeLinear in onnxruntime's optimized graph."""
    import onnx

    from onnxq.profiles import load_profile
    from onnxq.runtime import make_session

    opt = tmp / (path.stem + ".optimized.onnx")
    make_session(path, load_profile(PROFILE), optimized_model_path=str(opt))
    g = onnx.load(str(opt)).graph
    producer = {o: n for n in g.node for o in n.output}
    ints = Counter(n.op_type for n in g.node if n.op_type in INTEGER_KERNELS)
    floats = Counter(n.op_type for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm")
                     and any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input))
    return {"integer": dict(ints), "float_after_dq": dict(floats)}


@contextlib.contextmanager
def direct_export_mode(net, one_element: bool = False):
    """Make every fake-quant module export as PyTorch's own Q/DQ ops (the 'direct export' route).

    ``one_element`` stores per-tensor scales/zero points as 1-element tensors, the layout of
    torch.ao observers (DESIGN.md section 5: it kept onnxruntime from fusing).
    """
    import torch

    from onnxq.qat._fakequant import ActQuant, WeightQuant, qparams

    saved = []

    def act_forward(self, x):
        if self.mode != "quant":
            return x
        scale, zp = qparams(*(torch.tensor(v) for v in self.range()), self.sqmin, self.sqmax, symmetric=self.symmetric)
        if one_element:
            scale, zp = scale.reshape(1), zp.reshape(1)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, self.qmin, self.qmax)

    def weight_forward(self, w):
        if not self.enabled:
            return w
        scale, zp = self.scale_zero_point(w)
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, self.qmin, self.qmax)
        if one_element:
            scale, zp = scale.reshape(1), zp.reshape(1)
        return torch.fake_quantize_per_tensor_affine(w, scale, zp, self.qmin, self.qmax)

    for m in net.modules():
        if isinstance(m, ActQuant):
            saved.append((m, "forward", m.__dict__.get("forward")))
            m.forward = act_forward.__get__(m)
        elif isinstance(m, WeightQuant):
            saved.append((m, "forward", m.__dict__.get("forward")))
            m.forward = weight_forward.__get__(m)
        if "_bias_input" in m.__dict__:  # PyTorch's exporter has no int32 bias: float bias
            saved.append((m, "_bias_input", m.__dict__["_bias_input"]))
            object.__setattr__(m, "_bias_input", None)
    try:
        yield
    finally:
        for m, attr, old in saved:
            if old is None:
                m.__dict__.pop(attr, None)
            else:
                object.__setattr__(m, attr, old)


def direct_export(net, example_inputs, path: Path, input_names, output_names, opset: int = 17, one_element: bool = False) -> None:
    import torch

    was = net.training
    net.eval()
    with direct_export_mode(net, one_element), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        axes = {n: {0: "batch"} for n in list(input_names) + list(output_names)}
        torch.onnx.export(net, tuple(example_inputs), str(path), dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names), dynamic_axes=axes)
    net.train(was)


def quantized_tensor_count(path: Path) -> int:
    import onnx

    m = onnx.load(str(path))
    inits = {i.name for i in m.graph.initializer}
    consts = {n.output[0] for n in m.graph.node if n.op_type == "Constant"}
    return sum(1 for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits | consts)


def onnx_logits(path: Path, xs: list[np.ndarray], batch: int = 500) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xs[0][i : i + batch]})[0] for i in range(0, len(xs[0]), batch)])


def latency(models: dict[str, Path], runs: int) -> dict[str, dict[int, dict]]:
    from onnxq.bench import bench

    labels = list(models)
    res = bench([models[k] for k in labels], PROFILE, batches=[1, 32], threads=1, warmup=10, runs=runs, labels=labels)
    out: dict[str, dict[int, dict]] = {k: {} for k in labels}
    for row in res.rows:
        out[row.label][row.batch] = {"median_ms": row.latency.median_ms, "p90_ms": row.latency.p90_ms,
                                     "vs_first": (1.0 / row.speedup) if row.speedup else None}
    return out


def run_case(spec: str, out_dir: Path, name: str, *, epochs: int | None, lr: float | None) -> dict:
    from onnxq.qat import run_task

    t0 = time.perf_counter()
    res = run_task(spec, PROFILE, out_dir / f"{name}.qat.onnx", epochs=epochs, lr=lr, progress=True, keep_model=True)
    res["bench_wall_s"] = time.perf_counter() - t0
    acc = res["accuracy"]
    loss = acc["fp32"] - acc["ptq_static"]
    res["ptq_loss_points"] = 100 * loss
    res["qat_recovered_fraction"] = ((acc["qat"] - acc["ptq_static"]) / loss) if loss > 0.001 else None
    return res


def int4_direct(res: dict, out_dir: Path) -> dict:
    """What PyTorch's own export makes of 4-bit weight fake quant, against the onnxq route."""
    import onnx

    net, ex, state = res["qat_module"], res["example_inputs"], res["qat_module"].onnxq_qat
    path = out_dir / (Path(res["model_path"]).name.replace(".qat.onnx", ".qat-direct.onnx"))
    onnxq_side = {"size_bytes": Path(res["model_path"]).stat().st_size}
    try:
        direct_export(net, ex, path, state.input_names, state.output_names, state.opset)
    except Exception as e:  # the exporter's own refusal is the measurement
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"onnxq_route": onnxq_side, "direct_export": {"error": f"{type(e).__name__}: {first}"}}

    def weight_storage(p: Path) -> dict[str, int]:
        m = onnx.load(str(p))
        names = {onnx.TensorProto.INT4: "int4", onnx.TensorProto.INT8: "int8", onnx.TensorProto.FLOAT: "float32"}
        big = [i for i in m.graph.initializer if len(i.dims) >= 2]
        return dict(Counter(names.get(i.data_type, str(i.data_type)) for i in big))

    return {"onnxq_route": {"size_bytes": Path(res["model_path"]).stat().st_size, "weights": weight_storage(Path(res["model_path"]))},
            "direct_export": {"size_bytes": path.stat().st_size, "weights": weight_storage(path)}}


def _violations(path: Path, profile: str) -> dict[str, int]:
    import onnx

    from onnxq.check import check_model
    from onnxq.profiles import load_profile

    return dict(Counter(v.rule for v in check_model(onnx.load(str(path)), load_profile(profile))))


ROUTE_ONNXQ = "onnxq: float graph + learned ranges -> onnxruntime QDQ quantizer"
ROUTE_DIRECT = "direct export of the fake-quant ops, scalar scales"
ROUTE_DIRECT_1 = "direct export, 1-element scale tensors (torch.ao observer layout)"


def routes(res: dict, out_dir: Path, tmp: Path, runs: int) -> dict:
    """onnxq's route (already written by run_task) vs direct export of the fake-quant ops."""
    import onnx
    import torch

    from onnxq.qat._api import export as qat_export
    from onnxq.qat._api import prepare
    from onnxq.qat._onnx import read_layout

    net, ex = res["qat_module"], res["example_inputs"]
    xs, _ = res["eval_arrays"]
    state = net.onnxq_qat
    stem = Path(res["model_path"]).name.replace(".qat.onnx", "")
    paths = {ROUTE_ONNXQ: Path(res["model_path"]), ROUTE_DIRECT: out_dir / f"{stem}.qat-direct.onnx",
             ROUTE_DIRECT_1: out_dir / f"{stem}.qat-direct-1elem.onnx"}
    direct_export(net, ex, paths[ROUTE_DIRECT], state.input_names, state.output_names, state.opset)
    direct_export(net, ex, paths[ROUTE_DIRECT_1], state.input_names, state.output_names, state.opset, one_element=True)
    torch_logits = _torch_logits(net, xs)
    rows: dict = {"routes": {}}
    for label, path in paths.items():
        got = onnx_logits(path, xs)
        rows["routes"][label] = {
            "path": str(path),
            "size_bytes": path.stat().st_size,
            "optimized_graph": optimized_ops(path, tmp),
            "quantized_activation_tensors": quantized_tensor_count(path),
            "top1_agreement_vs_torch": float(np.mean(got.argmax(1) == torch_logits.argmax(1))),
            "max_abs_logit_error_vs_torch": float(np.abs(got - torch_logits).max()),
            "check_violations": _violations(path, PROFILE),
        }
    # placement against PTQ static of the float graph the QAT model was made from
    float_path = out_dir / "routes.float.onnx"
    qat_export(net, ex, out_dir / "routes.tmp.qat.onnx", fp32_path=float_path, manifest=False)
    from onnxq import quantize

    ptq_same = out_dir / "routes.ptq.onnx"
    calib = {state.input_names[0]: xs[0][:288]}
    quantize(float_path, mode="static", profile=PROFILE, calibration=calib, output=ptq_same,
             per_channel=state.recipe.per_channel, weight_type=state.recipe.weight_type, progress=False)
    fl = onnx.load(str(float_path))
    a = read_layout(onnx.load(str(paths[ROUTE_ONNXQ])), fl)
    b = read_layout(onnx.load(str(ptq_same)), fl)
    rows["placement_equal_to_ptq_static"] = {"onnxq route": a.tensors == b.tensors and len(a.weights) == len(b.weights),
                                             "ptq_quantized_tensors": len(b.tensors)}
    rows["latency"] = latency({"PTQ static": Path(res["ptq_model_path"]), ROUTE_ONNXQ: paths[ROUTE_ONNXQ],
                               ROUTE_DIRECT: paths[ROUTE_DIRECT], ROUTE_DIRECT_1: paths[ROUTE_DIRECT_1]}, runs)
    # the same network prepared for TensorRT (no training needed to compare conformance)
    trt = prepare(res["fp32_module"], profile="tensorrt", example_inputs=ex, calibration=calib,
                  input_names=state.input_names, output_names=state.output_names)
    trt_paths = {ROUTE_ONNXQ: out_dir / f"{stem}.trt.qat.onnx", ROUTE_DIRECT: out_dir / f"{stem}.trt.qat-direct.onnx"}
    qat_export(trt, ex, trt_paths[ROUTE_ONNXQ], manifest=False)
    direct_export(trt, ex, trt_paths[ROUTE_DIRECT], state.input_names, state.output_names, state.opset)
    rows["tensorrt_check_violations"] = {k: _violations(p, "tensorrt") for k, p in trt_paths.items()}
    for p in (out_dir / "routes.tmp.qat.onnx", out_dir / "routes.tmp.qat.onnxq.json"):
        p.unlink(missing_ok=True)
    del torch
    return rows


def _torch_logits(net, xs, batch: int = 500):
    import torch

    net.eval()
    with torch.no_grad():
        return np.concatenate([net(torch.from_numpy(xs[0][i : i + batch])).numpy() for i in range(0, len(xs[0]), batch)])


def pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def write_markdown(doc: dict, path: Path) -> None:
    lines = [
        "# QAT benchmark (onnxq.qat)",
        "",
        f"Generated {doc['generated']} by `python benchmarks/bench_qat.py {' '.join(doc['argv'])}` on {doc['host']['cpu']} "
        f"({doc['host']['cores']} cores; 1-min load average {doc['host']['load_avg_start']:.1f} at start, "
        f"{doc['host']['load_avg_end']:.1f} at the end: other jobs shared the machine). Profile `{PROFILE}`, onnxruntime "
        f"{doc['versions']['onnxruntime']}, torch {doc['versions']['torch']}. QAT ran with {doc['settings']['torch_threads']} torch thread(s).",
        "",
        "## Accuracy: FP32 vs PTQ static vs QAT (test sets, onnxruntime CPU)",
        "",
        "| case | weights | FP32 % | PTQ static % | QAT % | QAT vs FP32 (pts) | PTQ loss recovered | QAT epochs / steps | PyTorch vs ONNX top-1 agreement |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cases"]:
        a = c["accuracy"]
        rec = "-" if c["qat_recovered_fraction"] is None else f"{100 * c['qat_recovered_fraction']:.0f}%"
        wt = f"{c['weight_type']} {'per-channel' if c['per_channel'] else 'per-tensor'}"
        lines.append(f"| {c['label']} | {wt} | {pct(a['fp32'])} | {pct(a['ptq_static'])} | {pct(a['qat'])} | "
                     f"{100 * (a['qat'] - a['fp32']):+.2f} | {rec} | {c['epochs']} / {c['train']['steps']} (lr {c['lr']:g}) | "
                     f"{pct(c['agreement_torch_vs_onnx'])}% |")
    for c in doc["cases"]:
        if c.get("seed_runs"):
            q = np.array([r["qat"] for r in c["seed_runs"]])
            lines += ["", f"{c['label']}, QAT repeated with {len(q)} training batch orders: "
                      + ", ".join(f"{100 * v:.2f}" for v in q)
                      + f" (mean {100 * q.mean():.2f}, PTQ static {100 * c['accuracy']['ptq_static']:.2f}, FP32 "
                      f"{100 * c['accuracy']['fp32']:.2f}). One test image is 0.01 points."]
    lines += [
        "",
        "PTQ static and QAT use the same calibration images (the first 288 training images) and the same profile;",
        "QAT starts from the PTQ ranges and fine-tunes the trained FP32 network with fake quantization. The hard",
        "case is built deliberately: see examples/hard_case/qat_task.py. int4 weights are not fused by onnxruntime's",
        "CPU provider (DequantizeLinear -> float Conv/Gemm): they buy size, not speed.",
        "",
        "## CPU latency: QAT QDQ model vs PTQ static model of the same network",
        "",
        "onnxq.bench, interleaved rounds, 1 intra-op thread, median of "
        f"{doc['settings']['runs']} runs.",
        "",
        "| network | batch | PTQ static ms | QAT ms | QAT / PTQ |",
        "|---|---|---|---|---|",
    ]
    for c in doc["cases"]:
        for b, row in c["latency"]["QAT"].items():
            p = c["latency"]["PTQ static"][b]
            lines.append(f"| {c['label']} ({c['weight_type']}) | {b} | {p['median_ms']:.3f} | {row['median_ms']:.3f} | {row['vs_first']:.2f}x |")
    lines += [
        "",
        "## QAT training step time vs FP32",
        "",
        "| network | FP32 step ms | QAT step ms | ratio |",
        "|---|---|---|---|",
    ]
    for c in doc["cases"]:
        st = c["step_time_s"]
        if st.get("fp32") and st.get("qat"):
            lines.append(f"| {c['label']} | {1000 * st['fp32']:.1f} | {1000 * st['qat']:.1f} | {st['qat'] / st['fp32']:.2f}x |")
    lines += ["", "Median of 20 interleaved training steps (batch 128, Adam) on throw-away copies of each model.", ""]
    r = doc.get("routes")
    if r:
        lines += [
            "## Export route: measured, and why onnxq hands the learned ranges to onnxruntime's quantizer",
            "",
            "Fashion-MNIST QAT model; every route exported from the same trained fake-quant module (whose",
            "fake-quant points are already the ones onnxruntime's PTQ placement uses).",
            "",
            "| route | integer kernels in optimized graph | float Conv/Gemm after DequantizeLinear | quantized activations | top-1 agreement vs PyTorch | max logit error | `onnxq check` (cpu-x86-vnni) | size |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, row in r["routes"].items():
            og = row["optimized_graph"]
            ints = ", ".join(f"{k} x{v}" for k, v in sorted(og["integer"].items())) or "none"
            fl = ", ".join(f"{k} x{v}" for k, v in sorted(og["float_after_dq"].items())) or "none"
            viol = ", ".join(f"{k} x{v}" for k, v in sorted(row["check_violations"].items())) or "passes"
            lines.append(f"| {label} | {ints} | {fl} | {row['quantized_activation_tensors']} | {pct(row['top1_agreement_vs_torch'])}% | "
                         f"{row['max_abs_logit_error_vs_torch']:.4f} | {viol} | {row['size_bytes'] / 1024:.1f} KB |")
        lat = r["latency"]
        labels = [k for k in lat if k != "PTQ static"]
        lines += ["", "| batch | PTQ static ms | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for b in lat["PTQ static"]:
            cells = [f"{lat[k][b]['median_ms']:.3f} ({lat[k][b]['vs_first']:.2f}x)" for k in labels]
            lines.append(f"| {b} | {lat['PTQ static'][b]['median_ms']:.3f} | " + " | ".join(cells) + " |")
        pl = r["placement_equal_to_ptq_static"]
        trt = r["tensorrt_check_violations"]
        trt_txt = "; ".join(f"{k}: " + (", ".join(f"{rule} x{n}" for rule, n in sorted(v.items())) or "passes") for k, v in trt.items())
        lines += [
            "",
            f"Q/DQ placement of the onnxq route equals PTQ static of the same float graph: **{pl['onnxq route']}** "
            f"({pl['ptq_quantized_tensors']} quantized activation tensors).",
            "",
            f"Prepared for the `tensorrt` profile instead, `onnxq check --profile tensorrt` gives: {trt_txt}.",
        ]
        rr = r["routes"]
        fused_same = len({json.dumps(v["optimized_graph"], sort_keys=True) for v in rr.values()}) == 1
        size_ratio = rr[ROUTE_DIRECT]["size_bytes"] / rr[ROUTE_ONNXQ]["size_bytes"]
        int4 = next((c["int4_direct_export"] for c in doc["cases"] if c.get("int4_direct_export")), None)
        lines += [
            "",
            "What the measurements say:",
            "",
            f"* Fusion and speed: {'identical for all three routes' if fused_same else 'see the table: they differ'} on this "
            "network, 1-element scale tensors included. Here every route carries the fake-quant points onnxq took from "
            "onnxruntime's PTQ placement (ReLU removed, pooling scales shared); DESIGN.md section 5's unfused MobileNet "
            "export (0.3x) had other fake-quant points (not re-measured here).",
            f"* Size: the direct export stores float weights behind QuantizeLinear: {size_ratio:.1f}x the onnxq route's file.",
        ]
        if int4 and "error" in int4["direct_export"]:
            lines.append(f"* int4: PyTorch's exporter refuses the 4-bit fake quant outright (`{int4['direct_export']['error'].split('  [Caused')[0]}`); "
                         f"the onnxq route writes int4 weights ({int4['onnxq_route']['size_bytes'] / 1024:.1f} KB).")
        elif int4:
            lines.append(
                f"* int4: the direct export writes 4-bit fake quant as {int4['direct_export']['weights']} weight storage "
                f"({int4['direct_export']['size_bytes'] / 1024:.1f} KB) where the onnxq route writes {int4['onnxq_route']['weights']} "
                f"({int4['onnxq_route']['size_bytes'] / 1024:.1f} KB): PyTorch has no 4-bit QuantizeLinear."
            )
        lines += [
            "* Biases: the direct export keeps them float; onnxruntime's quantizer (and so PTQ) writes int32 biases with",
            "  scale input_scale x weight_scale, which the PyTorch fake-quant model also simulates.",
            "",
            "So onnxq exports the float graph (BatchNorm folded, trained weights) and lets onnxruntime's QDQ quantizer",
            "write the model with the learned ranges as overrides: the file is what PTQ static writes for the profile",
            "(placement, int8/int4 storage, int32 bias, the profile's onnxruntime options), and PTQ and QAT models are",
            "interchangeable on every execution provider. Fixing the direct export up to that point would mean",
            "re-implementing the quantizer (weight folding, bias quantization, int4 packing, per-provider options).",
            "",
        ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for qat.md / qat.json")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".cache" / "qat"), help="folder for the models written (git-ignored)")
    ap.add_argument("--train-limit", type=int, default=None, help="QAT on the first N training images per epoch (default: all 60k)")
    ap.add_argument("--runs", type=int, default=200, help="timed latency runs per model and batch (default 200)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    ap.add_argument("--skip-hard", action="store_true", help="only the Fashion-MNIST case")
    ap.add_argument("--seeds", type=int, default=3, help="extra QAT runs of the Fashion-MNIST case with other batch orders (default 3)")
    ap.add_argument("--render-only", action="store_true", help="rewrite qat.md from an existing qat.json, measure nothing")
    args = ap.parse_args(argv)
    if args.render_only:
        doc = json.loads((Path(args.out) / "qat.json").read_text())
        write_markdown(doc, Path(args.out) / "qat.md")
        return 0

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    if args.train_limit:
        os.environ["FASHION_QAT_TRAIN_LIMIT"] = str(args.train_limit)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    from onnxq.bench import host_info

    host = host_info()
    doc = {
        "schema": "onnxq.bench_qat/1",
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        "host": {"cpu": host.get("cpu_model", "?"), "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0]},
        "settings": {"profile": PROFILE, "runs": args.runs, "torch_threads": args.threads, "train_limit": args.train_limit},
        "cases": [],
    }
    cases = [("Fashion-MNIST CNN", str(ROOT / "examples/fashion_mnist/qat_task.py:TASK"), "fashion_cnn")]
    if not args.skip_hard:
        cases += [
            ("hard case: DS-CNN, per-tensor weights", str(ROOT / "examples/hard_case/qat_task.py:TASK"), "dscnn_per_tensor"),
            ("hard case: DS-CNN, int4 weights", str(ROOT / "examples/hard_case/qat_task.py:INT4_TASK"), "dscnn_int4"),
        ]
    for label, spec, name in cases:
        print(f"== {label}", file=sys.stderr)
        res = run_case(spec, work, name, epochs=None, lr=None)
        lat = latency({"PTQ static": Path(res["ptq_model_path"]), "QAT": Path(res["model_path"])}, args.runs)
        entry = {k: v for k, v in res.items() if k not in ("qat_module", "example_inputs", "eval_arrays", "fp32_module")}
        entry.update({"label": label, "latency": lat, "optimized_graph": optimized_ops(Path(res["model_path"]), tmp)})
        if name == "fashion_cnn":
            print("== export routes", file=sys.stderr)
            doc["routes"] = routes(res, work, tmp, args.runs)
            seeds = []
            for seed in range(1, args.seeds + 1):
                print(f"== Fashion-MNIST QAT, batch order seed {seed}", file=sys.stderr)
                os.environ["FASHION_QAT_SEED"] = str(seed)
                r2 = run_case(spec, work, f"{name}_seed{seed}", epochs=None, lr=None)
                seeds.append({"seed": seed, "qat": r2["accuracy"]["qat"], "ptq_static": r2["accuracy"]["ptq_static"]})
            os.environ.pop("FASHION_QAT_SEED", None)
            entry["seed_runs"] = [{"seed": 0, "qat": res["accuracy"]["qat"], "ptq_static": res["accuracy"]["ptq_static"]}] + seeds
        if res["weight_type"] == "int4":
            entry["int4_direct_export"] = int4_direct(res, work)
        doc["cases"].append(entry)
        a = res["accuracy"]
        print(f"   FP32 {pct(a['fp32'])}  PTQ {pct(a['ptq_static'])}  QAT {pct(a['qat'])}  "
              f"QAT/PTQ latency b1 {lat['QAT'][1]['vs_first']:.2f}x b32 {lat['QAT'][32]['vs_first']:.2f}x", file=sys.stderr)
    doc["host"]["load_avg_end"] = os.getloadavg()[0]
    (out / "qat.json").write_text(json.dumps(to_jsonable(doc), indent=2, allow_nan=False, default=str) + "\n")
    write_markdown(doc, out / "qat.md")
    print(f"wrote {out / 'qat.md'} and {out / 'qat.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
