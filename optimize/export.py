"""checkpoint -> ONNX: dynamic batch and spatial dims, mopt metadata, checked in ONNX Runtime before it lands."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from architectures import config_to_dict
from optimize import __version__
from optimize.artifacts import default_export_path
from optimize.checkpoint import LoadedCheckpoint, Normalization, load_checkpoint
from optimize.errors import MoptError
from optimize.fileio import atomic_output

INPUT_NAME = "input"
OUTPUT_NAME = "alpha"
DEFAULT_OPSET = 17
EXPORT_ATOL = 1e-4  # FP32 ONNX Runtime vs FP32 PyTorch; kernels differ only in summation order
# Odd, non-square, non-multiple-of-32 shapes: they exercise the skip-sized upsampling of every stage.
VERIFY_SHAPES = ((1, 3, 257, 383), (3, 3, 190, 141))


@dataclass
class ExportResult:
    """What :func:`onnx_from_checkpoint` wrote and how it was verified."""

    path: Path
    opset: int
    dynamic_batch: bool
    checks: list[dict] = field(default_factory=list)  # [{"shape": [..], "max_abs": float}]


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading external weights)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends have no common base but Exception
        raise MoptError(f"{path} is not a readable ONNX model: {exc}") from exc
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Insert or replace metadata entries in place."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def onnx_normalization(path: str | Path) -> Normalization:
    """The input normalization recorded at export; ImageNet's when the ONNX was not made by mopt."""
    meta = read_metadata(path)
    if "mopt.normalization" in meta:
        return Normalization.from_dict(json.loads(meta["mopt.normalization"]))
    return Normalization()


def max_abs_vs_torch(model: torch.nn.Module, onnx_path: Path, shapes: tuple[tuple[int, ...], ...]) -> list[dict]:
    """Run PyTorch and ONNX Runtime (CPU) on the same random inputs; max |difference| per shape."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    checks = []
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        if got.shape != expected.shape:
            raise MoptError(f"exported ONNX returns shape {got.shape} for input {shape}, PyTorch {expected.shape}")
        checks.append({"shape": list(shape), "max_abs": float(np.abs(got - expected).max())})
    return checks


def export_module(
    model: torch.nn.Module,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    static_batch: bool = False,
    output_name: str = OUTPUT_NAME,
) -> None:
    """Trace ``model`` (one ``N,3,H,W`` input, one 4-D output) to ONNX at ``path``, H and W dynamic.

    The bare export step: no metadata and no verification; :func:`onnx_from_checkpoint` adds both.
    """
    dynamic = {0: "batch", 2: "height", 3: "width"} if not static_batch else {2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of dynamo but gives the plainest graph
        # (no symbolic-shape guards) for a convolutional model with data-dependent Resize sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 3, 256, 256),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_axes={INPUT_NAME: dynamic, output_name: dynamic},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def onnx_from_checkpoint(
    checkpoint: str | Path | LoadedCheckpoint,
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    static_batch: bool = False,
    arch: str | None = None,
) -> ExportResult:
    """Export a checkpoint to ONNX and prove it computes what PyTorch computes.

    Args:
        checkpoint: a checkpoint path or an already loaded checkpoint.
        output: destination; defaults to ``engines/<checkpoint stem>.onnx``.
        opset: ONNX opset (13 or newer: Resize with sizes, HardSwish from 14).
        static_batch: fix the batch dimension to 1 (H and W stay dynamic).
        arch: architecture for a bare state dict.

    Raises:
        MoptError: bad checkpoint, unsupported opset, or ONNX Runtime disagreeing with PyTorch.
    """
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint, arch=arch)
    if not 14 <= opset <= 23:
        raise MoptError(f"opset {opset} is not supported; use 14..23 (HardSwish needs 14; default {DEFAULT_OPSET})")
    output = Path(output) if output else default_export_path(loaded.path)
    if output.suffix != ".onnx":
        raise MoptError(f"output {output} must end in .onnx")
    model = loaded.model.eval().cpu()
    with atomic_output(output) as tmp:
        export_module(model, tmp, opset, static_batch)
        proto = onnx.load(str(tmp))
        set_metadata(
            proto,
            {
                "mopt.arch": loaded.arch,
                "mopt.config": json.dumps(config_to_dict(loaded.config)),
                "mopt.normalization": json.dumps(loaded.normalization.to_dict()),
                "mopt.checkpoint_sha256": loaded.sha256,
                "mopt.version": __version__,
                "mopt.precision": "fp32",
            },
        )
        proto.producer_name = "mopt"
        proto.producer_version = __version__
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        shapes = tuple((1, *s[1:]) for s in VERIFY_SHAPES) if static_batch else VERIFY_SHAPES
        checks = max_abs_vs_torch(model, tmp, shapes)
        worst = max(checks, key=lambda c: c["max_abs"])
        if worst["max_abs"] > EXPORT_ATOL:
            raise MoptError(
                f"exported ONNX disagrees with PyTorch: max abs {worst['max_abs']:.2e} > {EXPORT_ATOL:.0e} at input "
                f"{worst['shape']}; nothing was written (try another --opset)"
            )
    return ExportResult(output, opset, not static_batch, checks)
