"""Where build outputs go when no path is given, so that ``mopt export ckpt`` then ``mopt build-engine`` works.

Everything lands in ``engines/`` named after the checkpoint: ``cvunet.onnx`` -> ``cvunet.sim.onnx`` ->
``cvunet.sim.fp16.onnx`` / ``cvunet.sim.int8.onnx`` -> ``cvunet.sim.fp16.plan`` (+ ``.json`` sidecar).
"""

from __future__ import annotations

from pathlib import Path

from optimize.errors import MoptError

ENGINES_DIR = Path("engines")
PRECISION_SUFFIXES = (".fp16", ".int8")


def derived_path(source: str | Path, tag: str, suffix: str = ".onnx") -> Path:
    """``engines/cvunet.onnx`` + ``"sim"`` -> ``engines/cvunet.sim.onnx`` (beside the source)."""
    source = Path(source)
    return source.with_name(f"{source.name[: -len(source.suffix)]}.{tag}{suffix}")


def default_export_path(checkpoint: str | Path) -> Path:
    return ENGINES_DIR / f"{Path(checkpoint).stem}.onnx"


def latest_fp32_onnx(folder: Path = ENGINES_DIR, simplified: bool = True) -> Path:
    """The FP32 model the last ``mopt export`` / ``mopt simplify`` left in ``folder``.

    The newest export wins; its simplified version is returned when it exists and ``simplified`` is set.
    """
    candidates = [
        p for p in folder.glob("*.onnx") if not any(p.name.endswith(s + ".onnx") for s in (*PRECISION_SUFFIXES, ".sim"))
    ]
    if not candidates:
        raise MoptError(f"no ONNX model in {folder}/; run `mopt export CHECKPOINT` first or pass the ONNX path")
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    simplified_path = derived_path(newest, "sim")
    return simplified_path if simplified and simplified_path.exists() else newest
