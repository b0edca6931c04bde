"""``mopt quantize``: FP32 ONNX -> explicit INT8 Q/DQ ONNX, calibrated on images, verified on the CPU."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from optimize.artifacts import default_fp32_onnx
from optimize.cli.common import ThreadsOption, announce_models, console, progress
from optimize.defaults import DEFAULT_CALIBRATION_LIMIT, DEFAULT_VERIFY_COUNT, INT8_MAD
from optimize.errors import MoptError
from optimize.shapes import parse_size

app = typer.Typer()


class CalibrationMethod(str, Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


@app.command("quantize")
def quantize(
    onnx_path: Annotated[
        Path | None, typer.Argument(dir_okay=False, help="FP32 ONNX [the newest in engines/].")
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Quantize to INT8 with explicit Q/DQ nodes.")] = False,
    calib: Annotated[
        Path | None, typer.Option("--calib", file_okay=False, help="Folder of calibration images.")
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option("--synthetic", min=1, help="Calibrate on N built-in synthetic composites instead.")
    ] = None,
    method: Annotated[
        CalibrationMethod, typer.Option("--method", help="Calibration method.")
    ] = CalibrationMethod.entropy,
    calib_cache: Annotated[
        Path | None, typer.Option("--calib-cache", dir_okay=False, help="Calibration cache [<name>.int8.calib.json].")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="Output [<name>.int8.onnx].")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", dir_okay=False, help="Nodes to keep in FP32, from `mopt debug precision`."),
    ] = None,
    calib_size: Annotated[str | None, typer.Option("--calib-size", help="Calibration H x W [256x256].")] = None,
    calib_limit: Annotated[
        int, typer.Option("--calib-limit", min=1, help="Use at most this many calibration images.")
    ] = DEFAULT_CALIBRATION_LIMIT,
    images: Annotated[
        Path | None,
        typer.Option("--images", file_okay=False, help="Verify on these images [the --calib images, else synthetic]."),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option("--size", help="Verification (deployment) H x W [the model's fixed size, else 512x512]."),
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Verification images.")] = DEFAULT_VERIFY_COUNT,
    mad: Annotated[
        float, typer.Option("--mad", min=0.0, help="Largest accepted mean |alpha - FP32 alpha|.")
    ] = INT8_MAD,
    threads: ThreadsOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output made with other settings.")
    ] = False,
) -> None:
    """Write an INT8 Q/DQ version of ONNX_PATH (symmetric, per-channel weights) and check its mattes against FP32."""
    from optimize.quantize import int8_quantization_from_onnx

    if not int8:
        raise MoptError("choose the target precision: --int8 (for FP16 use `mopt convert-precision ONNX --fp16`)")
    from optimize.identity import model_identity

    source, origin = (onnx_path, None) if onnx_path else default_fp32_onnx()
    announce_models(model_identity(source, origin))
    with progress() as bar:
        task = bar.add_task("calibrating", total=None)
        result = int8_quantization_from_onnx(
            source,
            output,
            calib_dir=calib,
            synthetic=synthetic,
            method=method.value,
            calib_cache=calib_cache,
            recipe=recipe,
            calib_size=parse_size(calib_size) if calib_size else None,
            calib_limit=calib_limit,
            images=images,
            size=parse_size(size) if size else None,
            count=count,
            mad=mad,
            threads=threads,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            force=force,
        )
    check = result.checks[0]
    cal = result.calibration
    console.print(
        f"wrote {result.path}: {len(result.quantized)} nodes in INT8, "
        f"{result.qdq_nodes[0]} Q / {result.qdq_nodes[1]} DQ nodes"
    )
    if result.kept_fp32:
        console.print(f"kept in FP32 by the recipe: {', '.join(result.kept_fp32)}")
    console.print(
        f"calibration: {result.method} on {cal['count']} images from {cal['source']} at {cal['size']}; "
        f"cache {result.cache_status}: {result.cache_path}"
    )
    console.print(
        f"INT8 vs FP32 (ONNX Runtime CPU, {result.inputs['count']} {result.inputs['images']}, "
        f"{result.inputs['size']}): "
        f"MAD {check.mad:.2e} (budget {mad:g}), max abs {check.max_abs:.2e}, MSE {check.mse:.2e}"
    )
