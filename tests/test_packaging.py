"""pyproject.toml lists every package: a non-editable `pip install .` installs only what it names."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_onnxq_package_is_listed():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "onnxq").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    mapped = {name for name in listed if name not in found}
    assert mapped == set(conf.get("package-dir", {})), mapped


def test_shipped_data_is_declared():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert list((ROOT / "hw_profiles").glob("*.toml")), "no shipped profiles"
    assert conf["package-data"]["onnxq.hw_profiles"] == ["*.toml"]
    demo = {p.suffix for p in (ROOT / "onnxq" / "demo").iterdir() if p.suffix in (".onnx", ".npz")}
    assert demo == {".onnx", ".npz"}
    assert set(conf["package-data"]["onnxq.demo"]) == {"*.onnx", "*.npz"}
