"""onnxq.qat: fake quant that matches onnxruntime, fused export, PTQ-identical placement, bad input.

Tiny models on scikit-learn's 8x8 digits, a few dozen training steps each: fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
nn = torch.nn

import onnxq  # noqa: E402
import onnxq.qat as qat  # noqa: E402
from onnxq.errors import CheckFailed, InputError  # noqa: E402
from onnxq.profiles import load_profile  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: torch's thread pool only adds contention on a busy 2-core runner (9 s vs 0.4 s here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

INTEGER_KERNELS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "QGemm", "ConvInteger", "DynamicQuantizeMatMul"}


# -- data and models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = ((d.images / 16.0 - 0.3) / 0.4).astype(np.float32)[:, None]
    return x, d.target.astype(np.int64)


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, depthwise + pointwise with a residual Add, max and average pooling, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Conv2d(8, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        x = self.avg(self.pool(x))
        return self.fc(torch.flatten(x, 1))


def _train(net, x, y, steps=60, lr=0.01, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    net.train()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), 64)
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def fp32_cnn(digits):
    torch.manual_seed(0)
    return _train(TinyCNN(), *digits, steps=120)


def _logits_ort(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _logits_torch(net, x):
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def qat_cnn(fp32_cnn, digits, tmp_path_factory):
    x, y = digits
    tmp = tmp_path_factory.mktemp("qat_cnn")
    net = qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),),
                      calibration={"x": x[:288]}, freeze_after=20)
    _train(net, x, y, steps=30, lr=1e-3, seed=1)
    out = tmp / "cnn.qat.onnx"
    res = qat.export(net, (torch.from_numpy(x[:1]),), out, fp32_path=tmp / "cnn.qat-float.onnx")
    return {"net": net, "res": res, "path": out, "fp32_path": tmp / "cnn.qat-float.onnx", "tmp": tmp}


# -- the exported model ------------------------------------------------------------------------------


def test_export_writes_model_and_manifest(qat_cnn):
    res = qat_cnn["res"]
    assert res.output.exists() and res.manifest.exists() and res.fp32_output.exists()
    man = json.loads(res.manifest.read_text())
    assert man["kind"] == "qat" and man["profile"]["name"] == "cpu-x86-vnni"
    assert man["qat"]["folded_batchnorm"]  # BN folded into the convs
    m = onnx.load(str(res.output))
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch axis
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)


def test_fused_into_integer_kernels_on_cpu(qat_cnn):
    from onnxq.runtime import make_session

    opt = qat_cnn["tmp"] / "optimized.onnx"
    make_session(qat_cnn["path"], load_profile("cpu-x86-vnni"), optimized_model_path=str(opt))
    g = onnx.load(str(opt)).graph
    ops = Counter(n.op_type for n in g.node)
    producer = {o: n for n in g.node for o in n.output}
    float_after_dq = [n.name for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul", "FusedConv")
                      and any(i in producer and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert ops["QLinearConv"] == 3 and ops["QGemm"] == 1, ops
    assert float_after_dq == []
    assert qat_cnn["res"].fused["float_after_dq"] == {}


def test_agrees_with_pytorch_fake_quant(qat_cnn, digits):
    x, _ = digits
    ref = _logits_torch(qat_cnn["net"], x)
    got = _logits_ort(qat_cnn["path"], x)
    agree = np.mean(ref.argmax(1) == got.argmax(1))
    assert agree >= 0.995
    cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert cos > 0.999
    assert np.abs(ref - got).max() < 0.1 * np.abs(ref).max()


def test_weights_and_scales_are_what_pytorch_used(qat_cnn):
    net, m = qat_cnn["net"], onnx.load(str(qat_cnn["path"]))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    producer = {o: n for n in m.graph.node for o in n.output}
    state = net.onnxq_qat
    assert set(state.weights) == {"stem.0", "dw.0", "pw", "fc"}
    for path, info in state.weights.items():
        layer = net.get_submodule(path)
        want = layer.wq(layer.weight).detach().numpy()
        dq = producer[nodes[info["onnx_node"]].input[1]]
        q, scale = inits[dq.input[0]].astype(np.float32), inits[dq.input[1]]
        got = q * scale.reshape((-1,) + (1,) * (q.ndim - 1))
        assert np.array_equal(got, want), path
    for group in state.groups:
        owner = net.onnxq_probes[state.group_owner[group[0]]]
        s, z = owner.scale_zero_point()
        q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in (group[0], group[0] + "_QuantizeLinear_Input"))
        assert float(inits[q.input[1]]) == s and int(inits[q.input[2]]) == z, group


def test_placement_equals_ptq_static_of_the_same_float_graph(qat_cnn, digits, tmp_path):
    from onnxq.qat._onnx import read_layout

    x, _ = digits
    ptq_out = tmp_path / "cnn.ptq.onnx"
    onnxq.quantize(qat_cnn["fp32_path"], mode="static", profile="cpu-x86-vnni", calibration={"x": x[:288]},
                   output=ptq_out, progress=False)
    float_model = onnx.load(str(qat_cnn["fp32_path"]))
    q_qat, q_ptq = onnx.load(str(qat_cnn["path"])), onnx.load(str(ptq_out))
    a, b = read_layout(q_qat, float_model), read_layout(q_ptq, float_model)
    assert a.tensors == b.tensors and len(a.tensors) >= 6
    assert sorted(map(tuple, a.groups)) == sorted(map(tuple, b.groups))
    assert {k: (w.per_channel, w.qtype) for k, w in a.weights.items()} == {k: (w.per_channel, w.qtype) for k, w in b.weights.items()}
    assert Counter(n.op_type for n in q_qat.graph.node) == Counter(n.op_type for n in q_ptq.graph.node)


def test_conforms_to_its_profile(qat_cnn):
    from onnxq.check import check_model

    assert check_model(onnx.load(str(qat_cnn["path"])), load_profile("cpu-x86-vnni")) == []


def test_tensorrt_profile_zero_points_are_zero(fp32_cnn, digits, tmp_path):
    from onnxq.check import check_model

    x, y = digits
    net = qat.prepare(fp32_cnn, profile="tensorrt", example_inputs=(torch.from_numpy(x[:1]),), calibration={"x": x[:288]})
    _train(net, x, y, steps=10, lr=1e-3)
    out = tmp_path / "cnn.trt.onnx"
    qat.export(net, (torch.from_numpy(x[:1]),), out)
    m = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    zps = [inits[n.input[2]] for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zps and all(z.dtype in (np.int8, np.int32) and not z.any() for z in zps)
    assert check_model(m, load_profile("tensorrt")) == []
    agree = np.mean(_logits_torch(net, x).argmax(1) == _logits_ort(out, x).argmax(1))
    assert agree >= 0.995


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True, activation="gelu")
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)).mean(1))


def test_transformer_encoder_linear_and_matmul_blocks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 6, 8)).astype(np.float32)
    y = (x[:, :, :4].sum((1, 2)) > 0).astype(np.int64) + 2 * (x[:, 0, 4] > 0)
    torch.manual_seed(0)
    fp32 = _train(TinyEncoder(), x, y, steps=80, lr=3e-3)
    net = qat.prepare(fp32, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:2]),), calibration={"x": x[:288]})
    state = net.onnxq_qat
    assert set(state.recipe.op_types) == {"MatMul", "Gemm", "Gather"}  # transformer-like graph: PTQ's auto op types
    assert len(state.weights) == 8  # input projection, q, k, v, out_proj, linear1, linear2, head
    _train(net, x, y, steps=10, lr=1e-4)
    out = tmp_path / "enc.qat.onnx"
    res = qat.export(net, (torch.from_numpy(x[:2]),), out)
    assert set(res.fused["integer"]) & INTEGER_KERNELS and res.fused["float_after_dq"] == {}
    ref, got = _logits_torch(net, x), _logits_ort(out, x)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.995


def test_int4_weights(fp32_cnn, digits, tmp_path):
    x, y = digits
    net = qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),),
                      calibration={"x": x[:288]}, weight_type="int4")
    _train(net, x, y, steps=10, lr=1e-3)
    out = tmp_path / "cnn.int4.onnx"
    res = qat.export(net, (torch.from_numpy(x[:1]),), out)
    m = onnx.load(str(out))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node if "Quantize" in n.op_type)  # standard QDQ
    int4 = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT4 and i.name.endswith("_quantized")]
    assert len(int4) == 4
    assert any("int4" in w for w in res.warnings)  # size, not CPU speed
    assert np.mean(_logits_torch(net, x).argmax(1) == _logits_ort(out, x).argmax(1)) >= 0.995


# -- ranges --------------------------------------------------------------------------------------------


def test_scale_and_zero_point_match_onnxruntime():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    from onnxq.qat._fakequant import qparams, scale_range

    rng = np.random.default_rng(0)
    for _ in range(200):
        lo, hi = np.float32(rng.normal() * 3), np.float32(abs(rng.normal()) * 5)
        for qtype, sym, np_t in (("uint8", False, np.uint8), ("int8", True, np.int8), ("int8", False, np.int8)):
            qmin, qmax = scale_range(qtype, sym)
            z, s = compute_scale_zp(np.array(lo), np.array(hi), np.array(qmin, np_t), np.array(qmax, np_t), sym)
            ts, tz = qparams(torch.tensor(lo), torch.tensor(hi), qmin, qmax, symmetric=sym)
            assert float(ts) == float(s) and int(tz) == int(z), (lo, hi, qtype, sym)


def test_ema_ranges_freeze_after_n_steps(fp32_cnn, digits):
    x, y = digits
    net = qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),),
                      calibration={"x": x[:288]}, freeze_after=3)
    owners = [net.onnxq_probes[i] for i in net.onnxq_qat.group_owner.values()]
    before = [o.range() for o in owners]
    _train(net, x, y, steps=3, lr=1e-3)
    after3 = [o.range() for o in owners]
    _train(net, x, y, steps=3, lr=1e-3, seed=5)
    assert after3 != before  # EMA moved the ranges ...
    assert [o.range() for o in owners] == after3  # ... then froze them
    assert all(o.frozen and int(o.steps) == 3 for o in owners)


def test_learnable_ranges_train_then_freeze(fp32_cnn, digits, tmp_path):
    x, y = digits
    net = qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),),
                      calibration={"x": x[:288]}, ranges="learnable", freeze_after=4)
    owners = [net.onnxq_probes[i] for i in net.onnxq_qat.group_owner.values()]
    _train(net, x, y, steps=4, lr=1e-2)
    moved = [o.range() for o in owners]
    _train(net, x, y, steps=4, lr=1e-2, seed=3)
    assert [o.range() for o in owners] == moved
    assert all(not o.hi_p.requires_grad for o in owners)
    out = tmp_path / "learn.onnx"
    res = qat.export(net, (torch.from_numpy(x[:1]),), out)
    assert res.fidelity_vs_torch["output"]["top1_agreement"] >= 0.95


# -- bad input -----------------------------------------------------------------------------------------


def test_model_with_only_unsupported_layers_is_refused():
    net = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU())
    with pytest.raises(InputError, match="no Conv2d or Linear"):
        qat.prepare(net, profile="cpu-x86-vnni", example_inputs=(torch.randn(1, 1, 16),),
                    calibration={"input": np.random.randn(8, 1, 16).astype(np.float32)})


def test_unsupported_layer_stays_float_with_a_warning(digits):
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1d = nn.Conv1d(8, 8, 3, padding=1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.c1d(x.reshape(x.size(0), 8, 8)), 1))

    x, _ = digits
    net = qat.prepare(WithConv1d().eval(), profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),),
                      calibration={"x": x[:64]})
    assert any("c1d" in w and "Conv1d" in w and "float" in w for w in net.onnxq_qat.warnings)
    assert set(net.onnxq_qat.weights) == {"fc"}


@pytest.mark.parametrize("line", ['weight_symmetric = false', 'weight_type = "uint8"'])
def test_profile_scheme_qat_cannot_express_is_refused(tmp_path, fp32_cnn, digits, line):
    src = Path(load_profile("cpu-x86-vnni").source).read_text()
    key = line.split(" = ")[0]
    text = "\n".join(line if l.startswith(key + " ") else l for l in src.splitlines())
    path = tmp_path / "odd.toml"
    path.write_text(text.replace('name = "cpu-x86-vnni"', 'name = "odd"'))
    x, _ = digits
    with pytest.raises(InputError, match="cannot express"):
        qat.prepare(fp32_cnn, profile=str(path), example_inputs=(torch.from_numpy(x[:1]),), calibration={"x": x[:64]})


def test_export_before_prepare(fp32_cnn, tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(InputError, match="prepare"):
        qat.export(fp32_cnn, (torch.randn(1, 1, 8, 8),), out)
    assert not out.exists()


def test_example_inputs_of_the_wrong_shape(fp32_cnn, digits, qat_cnn, tmp_path):
    x, _ = digits
    with pytest.raises(InputError, match="does not run on example_inputs"):
        qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.randn(1, 1, 12, 12),), calibration={"x": x[:64]})
    out = tmp_path / "m.onnx"
    with pytest.raises(InputError, match="only the batch axis may differ"):
        qat.export(qat_cnn["net"], (torch.randn(1, 1, 12, 12),), out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_calibration(fp32_cnn, digits):
    x, _ = digits
    with pytest.raises(InputError, match="calibration"):
        qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),), calibration=None)


def test_non_finite_values_during_training(fp32_cnn, digits, tmp_path):
    from onnxq.qat._fakequant import NonFiniteError

    x, _ = digits
    net = qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),), calibration={"x": x[:64]})
    net.train()
    bad = torch.from_numpy(x[:4].copy())
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite"):
        net(bad)
    with torch.no_grad():
        net.get_submodule("fc").weight[0, 0] = float("inf")
    out = tmp_path / "m.onnx"
    with pytest.raises(InputError, match="NaN/inf"):
        qat.export(net, (torch.from_numpy(x[:1]),), out)
    assert not out.exists()


def test_structure_change_after_prepare_is_caught(fp32_cnn, digits, tmp_path):
    x, _ = digits
    net = qat.prepare(fp32_cnn, profile="cpu-x86-vnni", example_inputs=(torch.from_numpy(x[:1]),), calibration={"x": x[:64]})
    net.fc = nn.Sequential(net.fc, nn.Sigmoid())
    with pytest.raises(CheckFailed, match="structure changed"):
        qat.export(net, (torch.from_numpy(x[:1]),), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


# -- task runner and CLI --------------------------------------------------------------------------------

TASK_FILE = '''
import numpy as np, torch
from sklearn.datasets import load_digits
from onnxq.qat.task import QATTask
import sys; sys.path.insert(0, {tests!r})
from test_qat import TinyCNN, _train

d = load_digits()
X = ((d.images / 16.0 - 0.3) / 0.4).astype(np.float32)[:, None]
Y = d.target.astype(np.int64)

def batches(lo, hi, bs=64):
    return [(torch.from_numpy(X[i:min(i + bs, hi)]), torch.from_numpy(Y[i:min(i + bs, hi)])) for i in range(lo, hi, bs)]

def model():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return _train(TinyCNN(), X[:1400], Y[:1400], steps=120)

TASK = QATTask(model=model, train_data=lambda: batches(0, 1400), eval_data=lambda: batches(1400, 1797), lr=1e-3, epochs=1)
'''


def test_cli_qat_prints_fp32_ptq_qat_side_by_side(tmp_path, capsys):
    from onnxq.cli import main

    task = tmp_path / "digits_task.py"
    task.write_text(textwrap.dedent(TASK_FILE.format(tests=str(Path(__file__).parent))))
    out = tmp_path / "d.qat.onnx"
    rc = main(["qat", f"{task}:TASK", "--profile", "cpu-x86-vnni", "--epochs", "1", "-o", str(out), "-q"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    for label in ("FP32", "PTQ static INT8", "QAT INT8", "train step time", "FP32 control (fine-tuned like QAT)"):
        assert label in printed
    assert out.exists() and (tmp_path / "d.qat.fp32.onnx").exists() and (tmp_path / "d.qat.ptq.onnx").exists()


def test_run_task_returns_what_compare_needs(tmp_path):
    task = tmp_path / "digits_task2.py"
    task.write_text(textwrap.dedent(TASK_FILE.format(tests=str(Path(__file__).parent))))
    res = qat.run_task(f"{task}:TASK", "cpu-x86-vnni", tmp_path / "r.qat.onnx", epochs=1, progress=False,
                       measure_step_time=False)
    assert Path(res["model_path"]).exists() and Path(res["fp32_model_path"]).exists()
    assert set(res["accuracy"]) == {"fp32", "ptq_static", "qat", "qat_torch", "fp32_control"}
    assert Path(res["fp32_control_model_path"]).exists() and res["fp32_control_train"]["steps"] == res["train"]["steps"]
    assert res["agreement_torch_vs_onnx"] >= 0.995
    assert abs(res["accuracy"]["qat"] - res["accuracy"]["qat_torch"]) <= 0.01


def test_bad_task_spec(tmp_path):
    bad = tmp_path / "bad_task.py"
    bad.write_text("TASK = object()\n")
    with pytest.raises(InputError, match="lacks model, train_data, eval_data"):
        qat.load_task(f"{bad}:TASK")
