"""Packaging: the engine imports without any training framework, and the wheel carries the shipped
model and the converters so that ``pip install . && onnxviz demo`` works from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("tensorflow", "keras", "torch", "tf2onnx", "tf_keras", "torchvision", "jax")

# Installed before anything else in a fresh interpreter: importing a framework raises ImportError.
BLOCKER = f"""
import importlib.abc, sys
BLOCKED = {FRAMEWORKS!r}
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked by the test")
        return None
sys.meta_path.insert(0, _Block())
"""

IMPORT_ALL = """
import importlib, pkgutil
import onnxviz
names = ["onnxviz"] + [m.name for m in pkgutil.walk_packages(onnxviz.__path__, "onnxviz.")]
for name in names:
    importlib.import_module(name)
import converters
leaked = sorted(k for k in sys.modules if k.split(".")[0] in BLOCKED)
assert not leaked, f"framework modules imported: {leaked}"
print(len(names), "modules imported")
"""


def _python(code: str, cwd: Path, pythonpath: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_engine_imports_without_training_frameworks(tmp_path):
    proc = _python(BLOCKER + IMPORT_ALL, cwd=tmp_path, pythonpath=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "modules imported" in proc.stdout


def test_blocker_really_blocks(tmp_path):
    """Guard against a vacuous pass: the blocker must make a framework import fail."""
    proc = _python(BLOCKER + "\ntry:\n    import torch\nexcept ImportError as e:\n    print('blocked', e)\n",
                   cwd=tmp_path, pythonpath=REPO)
    assert proc.returncode == 0 and "blocked" in proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    model = REPO / "models" / "mnist_cnn.onnx"
    assert model.is_file(), f"shipped model missing: {model}"
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
                           str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    wheels = list(out.glob("onnxviz-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "onnxviz/_models/mnist_cnn.onnx" in names
        assert zf.read("onnxviz/_models/mnist_cnn.onnx") == (REPO / "models" / "mnist_cnn.onnx").read_bytes()
        assert zf.read("onnxviz/_models/shapes_cnn.onnx") == (REPO / "models" / "shapes_cnn.onnx").read_bytes()
        prior = "onnxviz/_models/mnist_cnn.prior.npz"  # beside its model, where prior="auto" finds it
        assert zf.read(prior) == (REPO / "models" / "mnist_cnn.prior.npz").read_bytes()
        assert "converters/__init__.py" in names
        for module in ("__init__", "graph", "rewrite", "runtime", "cli", "shipped", "fileio", "errors"):
            assert f"onnxviz/{module}.py" in names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "onnxviz = onnxviz.cli:main" in zf.read(entry_points).decode()
        assert not any(n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_installed_wheel_finds_its_model_from_any_folder(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _python("import onnxviz; from onnxviz.shipped import shipped_model_path as p; "
                   "print(onnxviz.__file__); print(p()); print(onnxviz.__version__)",
                   cwd=elsewhere, pythonpath=target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    module_file, model_path, version = proc.stdout.split()
    assert Path(module_file).is_relative_to(target)
    assert Path(model_path) == target / "onnxviz" / "_models" / "mnist_cnn.onnx"
    assert version != "0+unknown"
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'onnxviz'; "
                           "from onnxviz.cli import main; main()", "demo"],
                          cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(target)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "stripped Softmax" in proc.stdout
    assert "with the prior" in proc.stdout and "mnist_cnn.prior.npz" in proc.stdout


def test_shipped_model_lookup():
    from onnxviz.errors import OnnxvizError
    from onnxviz.shipped import shipped_model_path, shipped_models

    assert "mnist_cnn" in shipped_models()
    path = shipped_model_path()
    assert path == shipped_model_path("mnist_cnn.onnx") and path.is_file()
    assert path.resolve() == (REPO / "models" / "mnist_cnn.onnx").resolve()
    with pytest.raises(OnnxvizError, match="available: .*mnist_cnn"):
        shipped_model_path("no_such_model")
