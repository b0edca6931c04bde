"""mopt must import, and fail helpfully, without its optional heavy dependencies."""

import pkgutil
import subprocess
import sys

import pytest

import architectures
import optimize
from optimize.deps import install_hint, require
from optimize.errors import MoptError

OPTIONAL = ["tensorrt", "modelopt", "pytriton", "tritonclient", "cuda", "cupy", "openvino", "ray"]


def all_modules():
    names = []
    for package in (optimize, architectures):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return names


def test_every_module_imports_without_optional_dependencies():
    # Setting sys.modules[name] = None makes `import name` raise ImportError, as if it were not installed.
    code = (
        "import sys\n"
        f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
        f"import importlib\nfor m in {all_modules()!r}: importlib.import_module(m)\n"
        "import optimize.cli.main\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MoptError, match=r"pip install 'mopt\[tensorrt\]'"):
        require("tensorrt")
    assert install_hint("pytriton") == "pip install 'mopt[serve]'"


def test_no_module_imports_heavy_optional_packages_at_import_time():
    code = (
        "import sys, importlib\n"
        f"for m in {all_modules()!r}: importlib.import_module(m)\n"
        f"print(sorted(n for n in {OPTIONAL!r} if n in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_hint_for_a_submodule_falls_back_to_its_package():
    assert install_hint("tritonclient.grpc.model_config_pb2") == "pip install 'mopt[serve]'"
    assert install_hint("tensorrt.plugin") == "pip install 'mopt[tensorrt]'"
