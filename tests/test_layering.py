"""DESIGN section 1 layering, checked on the source: who may import torch and onnxruntime."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "onnxq"
# DESIGN.md section 1, exactly: who may import torch, who may import onnxruntime.
TORCH_IMPORTERS = {"torch_export.py"}  # plus everything under onnxq/qat/
ORT_IMPORTERS = {"ptq.py", "calibration.py", "runtime.py"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _importers(root: str) -> set[str]:
    return {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if root in imported_roots(p)}


def test_only_torch_export_and_qat_import_torch():
    assert {p for p in _importers("torch") if not p.startswith("qat/")} <= TORCH_IMPORTERS


def test_only_tf_export_imports_tensorflow():
    assert set().union(*(_importers(r) for r in ("tensorflow", "keras", "tf2onnx"))) <= {"tf_export.py"}


def test_only_ray_executor_imports_ray():
    assert _importers("ray") <= {"ray_executor.py"}


def test_only_ptq_calibration_and_runtime_import_onnxruntime():
    assert "runtime.py" in _importers("onnxruntime") <= ORT_IMPORTERS


def test_profiles_plan_manifest_report_import_neither_torch_nor_onnxruntime():
    for name in ("profiles.py", "plan.py", "report.py", "errors.py", "check.py", "results.py", "manifest.py", "verdict.py",
                 "vocab.py", "_fs.py", "usercode.py"):
        roots = imported_roots(PKG / name)
        assert not roots & {"torch", "onnxruntime"}, name


def test_ruff_enforces_the_same_rules(tmp_path):
    """The lint (run in .ci/run) refuses a banned import where the test above would."""
    import shutil

    ruff = shutil.which("ruff")
    if ruff is None:
        import pytest

        pytest.skip("ruff not installed (the test extra installs it)")
    probe = PKG / "_layering_probe.py"
    probe.write_text("import onnxruntime\nimport torch\n")
    try:
        r = subprocess.run([ruff, "check", "--select", "TID251", str(probe)], capture_output=True, text=True, cwd=PKG.parent)
    finally:
        probe.unlink()
    assert r.returncode == 1 and r.stdout.count("TID251") == 2, r.stdout


def test_report_path_runs_without_onnxruntime_or_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('onnxruntime', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import onnxq, onnxq.profiles, onnxq.plan, onnxq.report, onnxq.cli, onnxq.manifest, onnxq.verdict\n"
        "p = onnxq.profiles.load_profile('tensorrt')\n"
        "onnxq.cli.build_parser()\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
