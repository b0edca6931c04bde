"""``mopt debug precision``: find the nodes that must stay FP32 for an FP16/INT8 model to meet a matte budget."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from optimize.artifacts import default_fp32_onnx, derived_path
from optimize.cli.common import ThreadsOption, announce_models, console
from optimize.defaults import DEFAULT_BUDGET, DEFAULT_MAX_STEPS, DEFAULT_VERIFY_COUNT
from optimize.errors import MoptError
from optimize.recipe import DEFAULT_RUNTIME, RUNTIMES, Budget, RecipeStep, save_recipe
from optimize.shapes import parse_size

GROUP = "debug"
app = typer.Typer(no_args_is_help=True)


@app.callback()
def debug() -> None:
    """Find the cause of a problem, e.g. which nodes reduced precision damages."""


class CalibrationMethod(str, Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


def _format(value: float) -> str:
    return f"{value:.2e}" if math.isfinite(value) else "[red]inf/nan"


def print_step(step: RecipeStep) -> None:
    """One line per measurement, as the search goes."""
    verdict = "[green]pass" if step.passed else "[red]fail"
    metrics = " ".join(f"{k} {_format(v)}" for k, v in step.metrics.items())
    console.print(f"{step.step:>3} {step.action:<8} {verdict}[/] {metrics}  [dim]{step.description}")


@app.command("precision")
def precision(
    onnx_path: Annotated[
        Path | None, typer.Argument(dir_okay=False, help="FP32 ONNX [the newest in engines/].")
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Debug the FP16 conversion.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Debug the INT8 quantization.")] = False,
    budget: Annotated[
        str, typer.Option("--budget", help="METRIC=VALUE[,...] of mad, max_abs, mse vs FP32.")
    ] = DEFAULT_BUDGET,
    images: Annotated[
        Path | None, typer.Option("--images", file_okay=False, help="Measure on these images [synthetic].")
    ] = None,
    size: Annotated[str | None, typer.Option("--size", help="Measurement H x W [256x256].")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Images to measure on.")] = DEFAULT_VERIFY_COUNT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="Recipe [<name>.<precision>.recipe.json].")
    ] = None,
    calib: Annotated[
        Path | None, typer.Option("--calib", file_okay=False, help="INT8 calibration images [--images].")
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option("--synthetic", min=1, help="INT8: calibrate on N synthetic composites.")
    ] = None,
    method: Annotated[
        CalibrationMethod, typer.Option("--method", help="INT8 calibration method.")
    ] = CalibrationMethod.entropy,
    calib_cache: Annotated[
        Path | None, typer.Option("--calib-cache", dir_okay=False, help="INT8 calibration cache.")
    ] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=2, help="Measurement limit.")] = DEFAULT_MAX_STEPS,
    threads: ThreadsOption = None,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="Measure on onnxruntime or openvino (FP16: OpenVINO's f16/bf16 inference precision).",
        ),
    ] = DEFAULT_RUNTIME,
) -> None:
    """Bisect over the nodes of ONNX_PATH for the smallest set to keep in FP32; write it as a recipe."""
    from optimize.debug_precision import precision_recipe_from_onnx

    if fp16 == int8:
        raise MoptError("choose one precision to debug: --fp16 or --int8")
    target = "fp16" if fp16 else "int8"
    # A plain string checked here (not a Typer choice) so that a wrong runtime is one `mopt: error:` line.
    if runtime not in RUNTIMES:
        raise MoptError(f"unknown --runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    parsed_budget = Budget.parse(budget)
    from optimize.identity import model_identity

    source, origin = (onnx_path, None) if onnx_path else default_fp32_onnx()
    announce_models(model_identity(source, origin))
    output = output or derived_path(source, f"{target}.recipe", ".json")
    if output.suffix != ".json":
        raise MoptError(f"recipe path {output} must end in .json")
    measured_size = parse_size(size) if size else None
    console.print(f"debugging {target} of {source} against FP32, budget {parsed_budget.describe()}")
    recipe = precision_recipe_from_onnx(
        source,
        target,
        parsed_budget,
        images=images,
        size=measured_size,
        count=count,
        calib_dir=calib,
        synthetic=synthetic,
        method=method.value,
        calib_cache=calib_cache,
        calib_size=measured_size,
        max_steps=max_steps,
        threads=threads,
        on_step=print_step,
        runtime=runtime,
    )
    save_recipe(recipe, output)
    kept = recipe.nodes_to_keep_fp32
    summary = ", ".join(f"{k} {_format(v)}" for k, v in recipe.measured.items())
    if not kept:
        console.print(f"[green]{target} meets the budget with nothing extra kept in FP32[/] ({summary})")
    else:
        note = (
            ""
            if recipe.minimal
            else " [yellow](step limit reached: a passing set, not shown minimal; raise --max-steps)"
        )
        console.print(f"keep {len(kept)} node(s) in FP32: {', '.join(kept)}{note}")
        console.print(f"with them: {summary}")
    console.print(f"wrote {output}; use it with --recipe {output}")
