"""checkpoint -> ONNX: dynamic batch and spatial dims, mopt metadata, checked in ONNX Runtime before it lands."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from optimize import __version__
from optimize.artifacts import default_export_path
from optimize.card import DEFAULT_INPUT_NAME, DEFAULT_OUTPUT_NAME, ModelCard, SizeRule, exported_card
from optimize.checkpoint import LoadedCheckpoint, load_checkpoint
from optimize.defaults import DEFAULT_OPSET as DEFAULT_OPSET
from optimize.errors import MoptError
from optimize.fileio import atomic_output
from optimize.onnx_model import set_metadata, write_card

INPUT_NAME = DEFAULT_INPUT_NAME
OUTPUT_NAME = DEFAULT_OUTPUT_NAME
EXPORT_ATOL = 1e-4  # FP32 ONNX Runtime vs FP32 PyTorch; kernels differ only in summation order
# Odd, non-square, non-multiple-of-32 shapes: they exercise the skip-sized upsampling of every stage.
VERIFY_SHAPES = ((1, 3, 257, 383), (3, 3, 190, 141))
SAMPLE_SIZE = (256, 256)


def verify_shapes(
    size: SizeRule, batch: int | None = None, shapes: tuple[tuple[int, ...], ...] = VERIFY_SHAPES
) -> tuple[tuple[int, ...], ...]:
    """Input shapes to check a model at: odd ``shapes`` made to fit its size rule (and its fixed batch)."""
    fitted = tuple((batch or n, 3, *size.padded(h, w)) for n, _, h, w in shapes)
    return tuple(dict.fromkeys(fitted))  # a fixed size makes the shapes the same


@dataclass
class ExportResult:
    """What :func:`onnx_from_checkpoint` wrote and how it was verified."""

    path: Path
    opset: int
    dynamic_batch: bool
    checks: list[dict] = field(default_factory=list)  # [{"shape": [..], "max_abs": float}]


def max_abs_vs_torch(model: torch.nn.Module, onnx_path: Path, shapes: tuple[tuple[int, ...], ...]) -> list[dict]:
    """Run PyTorch and ONNX Runtime (CPU) on the same random inputs; max |difference| per shape."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    checks = []
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {input_name: x})[0]
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
    input_name: str = INPUT_NAME,
    fixed_size: tuple[int, int] | None = None,
) -> None:
    """Trace ``model`` (one ``N,3,H,W`` input, one 4-D output) to ONNX at ``path``.

    H and W are dynamic unless ``fixed_size`` is given (a model that only runs at one size). The bare export
    step: no metadata and no verification; :func:`onnx_from_checkpoint` adds both.
    """
    dynamic: dict[int, str] = {} if static_batch else {0: "batch"}
    if fixed_size is None:
        dynamic.update({2: "height", 3: "width"})
    height, width = fixed_size or SAMPLE_SIZE
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript exporter is deprecated in favour of dynamo but gives the plainest graph
        # (no symbolic-shape guards) for a convolutional model with data-dependent Resize sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 3, height, width),),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: dynamic, output_name: dynamic} if dynamic else None,
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
    card: ModelCard = loaded.card
    static_batch = static_batch or card.batch is not None
    with atomic_output(output) as tmp:
        export_module(model, tmp, opset, static_batch, card.output_name, card.input_name, card.size.fixed)
        proto = onnx.load(str(tmp))
        onnx_card = exported_card(card, card.input_name, card.output_name)
        set_metadata(
            proto,
            {
                "mopt.arch": loaded.arch,
                "mopt.config": json.dumps(card.arch_args),
                "mopt.checkpoint_sha256": loaded.sha256,
                "mopt.version": __version__,
                "mopt.precision": "fp32",
            },
        )
        write_card(proto, onnx_card)
        proto.producer_name = "mopt"
        proto.producer_version = __version__
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        checks = max_abs_vs_torch(model, tmp, verify_shapes(card.size, 1 if static_batch else None))
        worst = max(checks, key=lambda c: c["max_abs"])
        if worst["max_abs"] > EXPORT_ATOL:
            raise MoptError(
                f"exported ONNX disagrees with PyTorch: max abs {worst['max_abs']:.2e} > {EXPORT_ATOL:.0e} at input "
                f"{worst['shape']}; nothing was written (try another --opset)"
            )
    return ExportResult(output, opset, not static_batch, checks)
