"""``mopt convert-precision``: FP32 ONNX -> mixed-precision FP16 ONNX (ModelOpt AutoCast), verified on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from optimize.artifacts import default_fp32_onnx
from optimize.cli.common import ThreadsOption, announce_models, console
from optimize.defaults import DEFAULT_VERIFY_COUNT, FP16_MAD, FP16_MAX_ABS
from optimize.errors import MoptError
from optimize.shapes import parse_size

app = typer.Typer()


@app.command("convert-precision")
def convert_precision(
    onnx_path: Annotated[
        Path | None, typer.Argument(dir_okay=False, help="FP32 ONNX [the newest in engines/].")
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Convert to mixed FP16 (I/O and sensitive nodes stay FP32).")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="Output [<name>.fp16.onnx].")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", dir_okay=False, help="Nodes to keep in FP32, from `mopt debug precision`."),
    ] = None,
    images: Annotated[
        Path | None, typer.Option("--images", file_okay=False, help="Verify on these images [synthetic].")
    ] = None,
    size: Annotated[
        str | None,
        typer.Option("--size", help="Verification (deployment) H x W [the model's fixed size, else 512x512]."),
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Verification images.")] = DEFAULT_VERIFY_COUNT,
    max_abs: Annotated[
        float, typer.Option("--max-abs", min=0.0, help="Largest accepted |alpha - FP32 alpha|.")
    ] = FP16_MAX_ABS,
    mad: Annotated[
        float, typer.Option("--mad", min=0.0, help="Largest accepted mean |alpha - FP32 alpha|.")
    ] = FP16_MAD,
    threads: ThreadsOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output made with other settings.")
    ] = False,
) -> None:
    """Write an FP16 version of ONNX_PATH for strongly typed TensorRT and check its mattes against FP32."""
    from optimize.precision import fp16_conversion_from_onnx

    if not fp16:
        raise MoptError("choose the target precision: --fp16 (for INT8 use `mopt quantize ONNX --int8`)")
    from optimize.identity import model_identity

    source, origin = (onnx_path, None) if onnx_path else default_fp32_onnx()
    announce_models(model_identity(source, origin))
    with console.status(f"converting {source} to FP16 and verifying ..."):
        result = fp16_conversion_from_onnx(
            source, output, recipe, images, parse_size(size) if size else None, count, max_abs, mad, threads, force
        )
    inputs = result.inputs
    table = Table(
        title=f"{source} -> {result.path}: FP16 vs FP32 on {inputs['count']} {inputs['images']}, {inputs['size']}"
    )
    for column in ("measured on", "max abs", "MAD", "MSE"):
        table.add_column(column, justify="left" if column == "measured on" else "right")
    for check in result.checks:
        table.add_row(check.label, f"{check.max_abs:.2e}", f"{check.mad:.2e}", f"{check.mse:.2e}")
    console.print(table)
    ran, total = result.ort_fp16_nodes
    console.print(
        f"{result.converted} nodes in FP16, {len(result.kept_fp32)} kept in FP32"
        + (
            f" ({', '.join(result.kept_fp32[:5])}{' ...' if len(result.kept_fp32) > 5 else ''})"
            if result.kept_fp32
            else ""
        )
        + f"; {result.fp16_initializers} FP16 weight tensors, {result.casts} casts"
    )
    console.print(
        f"[dim]ONNX Runtime's CPU provider runs {ran} of the {total} FP16 nodes in FP16 (the rest in FP32 behind its "
        "own casts), so the FP16 emulation row is the one that predicts a GPU; budget: max abs "
        f"<= {max_abs:g}, MAD <= {mad:g}"
    )
