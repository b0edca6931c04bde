"""``mopt export``: checkpoint -> ONNX with dynamic batch and spatial dims, verified against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from optimize.cli.common import ArchOption, announce_models, console
from optimize.defaults import DEFAULT_OPSET

app = typer.Typer()


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(dir_okay=False, help="Checkpoint (.pth or .safetensors).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="ONNX file [engines/<name>.onnx].")
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = DEFAULT_OPSET,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Fix the batch dim to 1.")] = False,
    arch: ArchOption = None,
) -> None:
    """Export CHECKPOINT to ONNX (tensor names and sizes from its model card) and check it in ONNX Runtime."""
    from optimize.export import onnx_from_checkpoint
    from optimize.identity import model_identity

    announce_models(model_identity(checkpoint, arch=arch, kind="checkpoint"))
    result = onnx_from_checkpoint(checkpoint, output, opset=opset, static_batch=static_batch, arch=arch)
    checks = ", ".join(f"{'x'.join(map(str, c['shape']))}: {c['max_abs']:.1e}" for c in result.checks)
    batch = "dynamic" if result.dynamic_batch else "static (1)"
    console.print(f"wrote {result.path} (opset {result.opset}, batch {batch}, H/W dynamic)")
    console.print(f"ONNX Runtime vs PyTorch max abs: {checks}")
