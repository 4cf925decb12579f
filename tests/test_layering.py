"""DESIGN section 1 layering, checked on the source: who may import torch and onnxruntime."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "onnxq"
TORCH_OK = {"export.py", "qat.py"}
ORT_OK_PREFIX = ("ptq", "calibration", "runtime", "bench", "compare", "qat", "export", "commands")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_export_and_qat_import_torch():
    offenders = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py")
                 if "torch" in imported_roots(p) and p.name not in TORCH_OK and "qat" not in p.parts
                 and p.relative_to(PKG).as_posix() not in ("commands/qat.py", "commands/export.py")]
    assert offenders == []


def test_profiles_plan_report_check_import_neither_torch_nor_onnxruntime():
    for name in ("profiles.py", "plan.py", "report.py", "errors.py", "check.py", "results.py"):
        roots = imported_roots(PKG / name)
        assert not roots & {"torch", "onnxruntime"}, name


def test_report_path_runs_without_onnxruntime_or_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('onnxruntime', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import onnxq, onnxq.profiles, onnxq.plan, onnxq.report, onnxq.cli\n"
        "p = onnxq.profiles.load_profile('tensorrt'); onnxq.plan.make_plan(p, 'static')\n"
        "onnxq.cli.build_parser()\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
