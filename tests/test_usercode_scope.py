"""Issue 10, class 5: code in the working directory never shadows an installed module."""

import subprocess
import sys

import pytest

from onnxq.errors import InputError
from onnxq.usercode import load_object

TRAP = 'raise SystemExit("SHADOWED: a local {name}.py was imported instead of the real library")\n'


def _console_script():
    import shutil
    import sysconfig
    from pathlib import Path

    script = Path(sysconfig.get_path("scripts")) / "onnxq"
    return [str(script)] if script.is_file() else ([shutil.which("onnxq")] if shutil.which("onnxq") else None)


@pytest.mark.parametrize("launcher", ["python -m onnxq", "onnxq"])
def test_a_local_file_named_like_a_dependency_is_never_imported(tmp_path, launcher):
    cmd = [sys.executable, "-m", "onnxq"] if launcher != "onnxq" else _console_script()
    if cmd is None:
        pytest.skip("the onnxq console script is not installed (pip install -e . installs it)")
    for name in ("tabulate", "numpy", "onnx", "tqdm"):
        (tmp_path / f"{name}.py").write_text(TRAP.format(name=name))
    p = subprocess.run([*cmd, "profiles"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "SHADOWED" not in p.stderr + p.stdout, p.stderr
    assert "cpu-x86-vnni" in p.stdout


def test_export_factory_beside_a_shadowing_file_still_gets_the_real_library(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "tabulate.py").write_text(TRAP.format(name="tabulate"))
    (tmp_path / "net.py").write_text("import torch\n\ndef make():\n    return torch.nn.Linear(4, 2)\n")
    p = subprocess.run([sys.executable, "-m", "onnxq", "export", "net:make", "--input-shape", "2x4", "-o", "net.onnx", "-q"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "SHADOWED" not in p.stderr and (tmp_path / "net.onnx").is_file()


def test_file_spec_loads_exactly_that_file(tmp_path):
    (tmp_path / "mine.py").write_text("VALUE = 42\n")
    assert load_object(f"{tmp_path / 'mine.py'}:VALUE") == 42
    with pytest.raises(InputError):
        load_object(f"{tmp_path / 'missing.py'}:VALUE")
