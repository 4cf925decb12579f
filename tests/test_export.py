"""onnxq.export and `onnxq export`: opset from the profile, dynamic batch, parity, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

import onnxq  # noqa: E402
from onnxq.cli import main  # noqa: E402
from onnxq.errors import CheckFailed, InputError  # noqa: E402
from onnxq.torch_export import export  # noqa: E402
from onnxq.usercode import load_object as load_factory  # noqa: E402
from onnxq.profiles import load_profile  # noqa: E402

TINY_SRC = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))

    def make():
        torch.manual_seed(0)
        m = Tiny()
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        return m

    instance = make()
    """
)


@pytest.fixture()
def tiny_file(tmp_path: Path) -> Path:
    f = tmp_path / "tinynet.py"
    f.write_text(TINY_SRC)
    return f


@pytest.fixture()
def tiny(tiny_file: Path):
    return load_factory(f"{tiny_file}:make")()


class _WrongOnnx(torch.autograd.Function):
    """Computes x * 2 in PyTorch but exports as x * 3: a model whose ONNX differs."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def symbolic(g, x):
        return g.op("Mul", x, g.op("Constant", value_t=torch.tensor(3.0)))


class _Mismatch(torch.nn.Module):
    def forward(self, x):
        return _WrongOnnx.apply(x)


def test_export_opset_from_profile_dynamic_batch_and_parity(tiny, tmp_path):
    out = tmp_path / "tiny.onnx"
    tiny.train()
    res = export(tiny, torch.randn(1, 1, 8, 8), out, profile="cpu-x86-avx2")
    assert tiny.training, "export restores the module's train/eval mode"
    prof = load_profile("cpu-x86-avx2")
    m = onnx.load(str(out))
    assert res.opset == prof.opset == next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    assert res.input_names == ["input"] and res.output_names == ["output"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert res.parity["output"]["max_abs"] < 1e-4 and res.parity["output"]["cosine"] > 0.99999
    assert res.parity["output"]["batches"] == [1, 2]
    assert not list(tmp_path.glob("*.data")), "no side .onnx.data file"
    assert json.loads(res.manifest.read_text())["kind"] == "export"
    # batch 3 was never seen at export time: the batch axis really is dynamic
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    tiny.eval()
    with torch.no_grad():
        want = tiny(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_export_explicit_opset_names_and_package_forwarder(tiny, tmp_path):
    res = onnxq.export(tiny, (torch.randn(2, 1, 8, 8),), tmp_path / "t.onnx", opset=13, input_names=["pixels"], output_names=["logits"])
    assert res.opset == 13 and res.input_names == ["pixels"] and res.output_names == ["logits"]
    assert res.parity["logits"]["batches"] == [2, 4]
    # after `import onnxq.export` the package attribute is the module; it stays callable
    assert callable(onnxq.export)


def test_static_batch(tiny, tmp_path):
    res = export(tiny, torch.randn(2, 1, 8, 8), tmp_path / "s.onnx", dynamic_batch=False)
    m = onnx.load(str(tmp_path / "s.onnx"))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert res.parity["output"]["batches"] == [2]


def test_mismatch_raises_checkfailed_and_writes_nothing(tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(CheckFailed, match=r"output: max-abs .*cosine"):
        export(_Mismatch(), torch.randn(2, 3), out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t, p: export("not a module", torch.randn(1, 1, 8, 8), p), "must be a torch.nn.Module"),
        (lambda t, p: export(t, torch.randn(1, 8, 8), p), "failed on example inputs of shape 1x8x8"),
        (lambda t, p: export(t, [1, 2], p), "example_inputs must be"),
        (lambda t, p: export(t, torch.randn(1, 1, 8, 8), p, opset=99), "opset 99"),
        (lambda t, p: export(t, torch.randn(1, 1, 8, 8), p, input_names=["a", "b"]), "2 input name"),
    ],
)
def test_bad_arguments_are_input_errors(tiny, tmp_path, call, match):
    with pytest.raises(InputError, match=match) as ei:
        call(tiny, tmp_path / "x.onnx")
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "x.onnx").exists()


def test_load_factory(tiny_file):
    assert load_factory("collections:OrderedDict").__name__ == "OrderedDict"
    assert isinstance(load_factory(f"{tiny_file}:instance"), torch.nn.Module)
    with pytest.raises(InputError, match="no attribute 'nope'; callables there: .*make"):
        load_factory(f"{tiny_file}:nope")
    with pytest.raises(InputError, match="cannot import module 'no_such_mod_xyz'"):
        load_factory("no_such_mod_xyz:make")
    with pytest.raises(InputError, match="does not exist"):
        load_factory("missing/file.py:make")
    with pytest.raises(InputError, match="module:object"):
        load_factory("just_a_name")


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_in_process_with_checkpoint(tiny_file, tiny, tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    torch.save({"state_dict": tiny.state_dict()}, ck)
    out = tmp_path / "cli.onnx"
    rc = main(["export", f"{tiny_file}:make", "--input-shape", "1x1x8x8", "--checkpoint", str(ck), "-o", str(out), "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["path"] == str(out) and out.exists() and res["parity"]["output"]["ok"]
    # an nn.Module instance works as well as a factory
    assert main(["export", f"{tiny_file}:instance", "--input-shape", "2x1x8x8", "-o", str(tmp_path / "i.onnx"), "-q"]) == 0
    assert "parity" in capsys.readouterr().out


def test_cli_subprocess(tiny_file, tmp_path):
    out = tmp_path / "sub.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxq", "export", f"{tiny_file}:make", "--input-shape", "1x1x8x8", "-o", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "max-abs vs torch" in proc.stdout


def _bad_checkpoint(tmp_path: Path) -> Path:
    p = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(8, 1, 3, 3), "extra.bias": torch.zeros(2)}, p)
    return p


@pytest.mark.parametrize(
    "argv, match",
    [
        (lambda f, t: ["no_such_mod_xyz:make", "--input-shape", "1x1x8x8"], "cannot import module"),
        (lambda f, t: [f"{f}:nope", "--input-shape", "1x1x8x8"], "no attribute 'nope'"),
        (lambda f, t: [f"{f}:make", "--input-shape", "1x3x8x8"], "failed on example inputs of shape 1x3x8x8"),
        (lambda f, t: [f"{f}:make", "--input-shape", "1x1x8x8", "--checkpoint", str(t / "missing.pt")], "does not exist"),
        (lambda f, t: [f"{f}:make", "--input-shape", "1x1x8x8", "--checkpoint", str(_bad_checkpoint(t))], "does not fit the model: .*missing.*unexpected.*shape mismatch"),
    ],
)
def test_cli_bad_inputs_exit_2_and_write_nothing(tiny_file, tmp_path, capsys, argv, match):
    out = tmp_path / "never.onnx"
    assert main(["export", *argv(tiny_file, tmp_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("onnxq: error: ") and re.search(match, err[-1]), err
    assert not out.exists() and not (tmp_path / "never.onnxq.json").exists()


def test_cli_bad_shape_is_a_usage_error(tiny_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["export", f"{tiny_file}:make", "--input-shape", "1xfoo", "-o", str(tmp_path / "n.onnx")])
    assert ei.value.code == 2 and "not a shape like" in capsys.readouterr().err


def test_cli_check_failed_exit_1(tmp_path, capsys):
    f = tmp_path / "mism.py"
    f.write_text(
        "import torch\n"
        "class F(torch.autograd.Function):\n"
        "    @staticmethod\n    def forward(ctx, x): return x * 2\n"
        "    @staticmethod\n    def symbolic(g, x): return g.op('Mul', x, g.op('Constant', value_t=torch.tensor(3.0)))\n"
        "class M(torch.nn.Module):\n    def forward(self, x): return F.apply(x)\n"
    )
    out = tmp_path / "m.onnx"
    assert main(["export", f"{f}:M", "--input-shape", "2x3", "-o", str(out)]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert not out.exists()


def test_cli_without_torch(monkeypatch, tiny_file, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    assert main(["export", f"{tiny_file}:make", "--input-shape", "1x1x8x8", "-o", str(tmp_path / "n.onnx")]) == 2
    assert "pip install torch==2.13.0" in capsys.readouterr().err

