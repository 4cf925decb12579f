"""Tiny ONNX models built in code for tests (1-10 nodes, random but seeded weights)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def cnn(path=None, batch="N", opset=17, seed=0, classes=10):
    """Conv(3x3) -> Relu -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])
    inits = [
        _init("w1", rng.normal(0, 0.5, (8, 1, 3, 3))), _init("b1", rng.normal(0, 0.1, 8)),
        _init("w2", rng.normal(0, 0.2, (16, 8, 3, 3))), _init("b2", rng.normal(0, 0.1, 16)),
        _init("wf", rng.normal(0, 0.3, (classes, 16))), _init("bf", rng.normal(0, 0.1, classes)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "tiny_cnn", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    if path:
        onnx.save_model(m, str(path))
    return m


def mlp(path=None, d_in=64, hidden=128, classes=10, seed=0):
    """MatMul -> Add -> Relu -> MatMul -> Add: a Linear-heavy model."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])
    inits = [
        _init("w1", rng.normal(0, 1 / np.sqrt(d_in), (d_in, hidden))), _init("b1", np.zeros(hidden)),
        _init("w2", rng.normal(0, 1 / np.sqrt(hidden), (hidden, classes))), _init("b2", np.zeros(classes)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Relu", ["hb"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="add2"),
    ]
    m = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if path:
        onnx.save_model(m, str(path))
    return m


def attention(path=None, seq=8, d=16, seed=0, mask_value=float("-inf")):
    """Single-head self-attention with an additive mask input: scores + mask -> Softmax."""
    rng = np.random.default_rng(seed)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", seq, d])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, seq])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", seq, d])
    inits = [_init(n, rng.normal(0, 1 / np.sqrt(d), (d, d))) for n in ("wq", "wk", "wv", "wo")]
    inits.append(_init("perm_scale", np.array(1 / np.sqrt(d))))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "perm_scale"], ["ss"], name="scale"),
        helper.make_node("Add", ["ss", "mask"], ["sm"], name="add_mask"),
        helper.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"], name="pv"),
        helper.make_node("MatMul", ["a", "wo"], ["y"], name="o_proj"),
    ]
    m = helper.make_model(helper.make_graph(nodes, "attn", [x, mask], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if path:
        onnx.save_model(m, str(path))
    return m


def attention_data(n=64, seq=8, d=16, seed=1, mask_value=float("-inf")):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, seq, d)).astype(np.float32)
    mask = np.zeros((n, 1, seq), dtype=np.float32)
    mask[:, :, seq // 2 :] = mask_value  # pad the second half
    return {"x": x, "mask": mask}


def cnn_data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    return {"input": rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32)}
