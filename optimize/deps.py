"""Lazy imports of the heavy optional dependencies.

TensorRT, ModelOpt and PyTriton are optional extras: importing mopt must never need them, and
a missing one must become a :class:`MoptError` that names the extra to install, never an ImportError
traceback or an import-time exit.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from types import ModuleType

from optimize.errors import MoptError

# module -> (extra that provides it, what it is for). Keep the hints free of package-index host names.
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "tensorrt": ("tensorrt", "building and running TensorRT engines (needs an NVIDIA GPU and driver)"),
    "modelopt": ("precision", "FP16 graph conversion and INT8 quantization (NVIDIA ModelOpt)"),
    "modelopt.onnx.autocast": ("precision", "FP16 graph conversion (NVIDIA ModelOpt AutoCast)"),
    "modelopt.onnx.quantization": ("precision", "INT8 quantization (NVIDIA ModelOpt)"),
    "pytriton": ("serve", "serving with Triton Inference Server (nvidia-pytriton)"),
    "tritonclient": ("serve", "Triton client and model-config protobufs"),
    "onnxsim": ("", "graph simplification"),
    "segmentation_models_pytorch": ("smp", "building segmentation_models_pytorch (SMP) architectures"),
    "ray": ("ray", "running mopt matte as a Ray Data pipeline (--ray)"),
    "polygraphy": ("", "model comparison"),
    "openvino": ("", "running ONNX models with OpenVINO on the CPU"),
}


def _entry(module: str) -> tuple[str, str]:
    """The (extra, purpose) of ``module``, else of its closest listed parent package."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in OPTIONAL_MODULES:
            return OPTIONAL_MODULES[name]
    return ("", "this feature")


def install_hint(module: str) -> str:
    """The pip command that provides ``module``."""
    extra = _entry(module)[0]
    return f"pip install 'mopt[{extra}]'" if extra else "pip install mopt"


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise a MoptError that says how to install it.

    Args:
        module: dotted module name, e.g. ``"tensorrt"`` or ``"modelopt.onnx.autocast"``.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but a shared library is not
        purpose = _entry(module)[1]
        top = module.split(".")[0]
        raise MoptError(
            f"{top} is not installed or failed to import ({exc}); it is needed for {purpose}: {install_hint(module)}"
        ) from exc


def is_available(module: str) -> bool:
    """Whether ``module`` imports, without raising."""
    try:
        importlib.import_module(module)
    except (ImportError, OSError):
        return False
    return True


# Loggers of the libraries called here; their INFO output is a wall of text a CLI user did not ask for.
_NOISY_LOGGERS = ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast", "modelopt.onnx.quantization", "root", "")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence ModelOpt's and ONNX Runtime quantization's INFO/WARNING logging for the duration of a call."""
    loggers = [logging.getLogger(name) if name else logging.getLogger() for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
