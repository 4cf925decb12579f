"""Issue 10, class 12: SIGINT and SIGTERM clean up and say truthfully what was written; an error is the
only line a script reads (notes such as the chosen profile print after success only)."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tiny_models
from clitools import run_cli

# a child onnxq that signals itself the K-th time a function runs (module.attr)
CHILD = textwrap.dedent("""
    import importlib, os, sys
    module, attr, k, signum = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    mod = importlib.import_module(module)
    real, seen = getattr(mod, attr), [0]
    def hooked(*a, **kw):
        seen[0] += 1
        if seen[0] == k:
            os.kill(os.getpid(), signum)
        return real(*a, **kw)
    setattr(mod, attr, hooked)
    from onnxq.cli import main
    sys.exit(main(sys.argv[5:]))
""")


@pytest.fixture
def d(tmp_path):
    tiny_models.cnn(tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", **tiny_models.cnn_data(64))
    np.savez(tmp_path / "e.npz", **tiny_models.cnn_data(32), labels=np.arange(32) % 10)
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _child(d, hook, k, signum, argv):
    import os

    env = dict(os.environ, TMPDIR=str(d / "tmp"))
    return subprocess.run([sys.executable, "-c", CHILD, *hook, str(k), str(signum), *map(str, argv)], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_mid_quantize_removes_every_temp_file(d, signum, code, word):
    out = d / "out" / "q.onnx"
    p = _child(d, ("onnxq.ptq", "write_qdq"), 1, signum, ["quantize", d / "m.onnx", "--calib", d / "c.npz", "--profile",
                                                           "cpu-x86-vnni", "-q", "-o", out])
    err = p.stderr.strip().splitlines()
    assert p.returncode == code and len(err) == 1, p.stderr
    assert err[0] == f"onnxq: {word}{' (SIGTERM)' if signum == signal.SIGTERM else ''}; no output was written (temporary files removed)"
    assert not (d / "out").exists()  # no model, no temp file, no folder
    # and no $TMPDIR/onnxq.* left (onnxruntime itself keeps a .ses session-id file there)
    assert [f.name for f in (d / "tmp").iterdir() if f.name != ".ses"] == []


def test_sigint_mid_compare_names_the_files_already_complete(d):
    p = _child(d, ("onnxq.ptq", "quantize"), 2, signal.SIGINT,
               ["compare", d / "m.onnx", "--calib", d / "c.npz", "--eval", d / "e.npz", "--profile", "cpu-x86-vnni", "-q",
                "-o", d / "cmp", "--variants", "static-pc-minmax,dynamic", "--runs", "2", "--warmup", "0"])
    err = p.stderr.strip().splitlines()
    assert p.returncode == 130 and len(err) == 1, p.stderr
    assert "after writing 2 complete file(s)" in err[0], err[0]
    written = sorted(f.name for f in (d / "cmp" / "cpu-x86-vnni").iterdir())
    assert len(written) == 2 and all(name in err[0] for name in written)  # the first variant's model + manifest, no more
    assert not (d / "cmp" / "report.json").exists()


def test_an_error_is_the_only_line_and_notes_follow_success(d, capsys):
    code, _, err = run_cli(capsys, "quantize", d / "m.onnx", "--calib", d / "missing.npz", "-o", d / "q.onnx")  # --profile auto
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("onnxq: error:")
    code, out, err = run_cli(capsys, "quantize", d / "m.onnx", "--calib", d / "c.npz", "-o", d / "q.onnx")
    assert code == 0 and err.strip().splitlines()[-1].split("\r")[-1].startswith("onnxq: auto-selected profile")
