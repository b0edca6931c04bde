"""``mopt build-engine``: ONNX -> TensorRT engine (+ JSON sidecar), FP32/FP16/INT8, the route each version wants."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from optimize.artifacts import ENGINES_DIR
from optimize.cli.common import announce_models, console
from optimize.engine import DEFAULT_OPT_LEVEL, EngineBuildResult, default_build_onnx, engine_from_onnx
from optimize.errors import MoptError
from optimize.profiles import DEFAULT_PROFILE, ShapeProfile, format_shape, profiles_from_options

app = typer.Typer()


class RouteChoice(str, Enum):
    graph = "graph"
    builder_flag = "builder-flag"


def chosen_precision(fp32: bool, fp16: bool, int8: bool) -> str | None:
    """The one precision flag given, ``None`` for none (the ONNX's own precision)."""
    given = [name for name, on in (("fp32", fp32), ("fp16", fp16), ("int8", int8)) if on]
    if len(given) > 1:
        raise MoptError(f"give one of --fp32, --fp16, --int8 (got {', '.join('--' + g for g in given)})")
    return given[0] if given else None


def print_result(result: EngineBuildResult) -> None:
    sidecar = result.sidecar
    table = Table(title=f"{result.path} ({sidecar['precision']}, {result.route.describe()})")
    for column in ("profile", "min", "opt", "max"):
        table.add_column(column, justify="left" if column == "profile" else "right")
    for index, data in enumerate(sidecar["profiles"]):
        profile = ShapeProfile.from_dict(data)
        table.add_row(str(index), *(str(profile).split(":")))
    console.print(table)
    machine = f"{sidecar['gpu']} ({sidecar['compute_capability']}), TensorRT {sidecar['tensorrt_version']}"
    if result.reused:
        console.print(f"reused {result.path}: built earlier from the same request on {machine} (--force rebuilds)")
    else:
        console.print(f"built {result.path} in {sidecar['build_seconds']:.1f} s on {machine}")
    console.print(f"sidecar {result.sidecar_path}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


@app.command("build-engine")
def build_engine(
    onnx: Annotated[
        Path | None,
        typer.Argument(
            dir_okay=False,
            help=f"ONNX model (default: what `mopt export`, convert-precision or quantize left in {ENGINES_DIR}/).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="Engine file (default: <onnx stem>.<precision>.plan beside the ONNX).",
        ),
    ] = None,
    fp32: Annotated[bool, typer.Option("--fp32", help="FP32 engine (TF32 off).")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine (mixed precision, I/O kept FP32).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from explicit Q/DQ nodes.")] = False,
    min_shape: Annotated[
        str | None, typer.Option("--min", help=f"Smallest input BxCxHxW (default {format_shape(DEFAULT_PROFILE.min)}).")
    ] = None,
    opt_shape: Annotated[
        str | None,
        typer.Option("--opt", help=f"Input BxCxHxW to tune for (default {format_shape(DEFAULT_PROFILE.opt)})."),
    ] = None,
    max_shape: Annotated[
        str | None, typer.Option("--max", help=f"Largest input BxCxHxW (default {format_shape(DEFAULT_PROFILE.max)}).")
    ] = None,
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Another profile min:opt:max (BxCxHxW each); repeatable.")
    ] = None,
    workspace: Annotated[
        float | None, typer.Option("--workspace", help="Workspace memory limit in GiB (default: TensorRT's).")
    ] = None,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            "--timing-cache",
            dir_okay=False,
            help="Timing cache (default: one per TensorRT version and GPU, beside the engine).",
        ),
    ] = None,
    opt_level: Annotated[int, typer.Option("--opt-level", help="Builder optimization level 0-5.")] = DEFAULT_OPT_LEVEL,
    route: Annotated[
        RouteChoice,
        typer.Option(
            "--route",
            help="graph: precision written into the ONNX, strongly typed network (any version); "
            "builder-flag: FP32 graph + FP16 builder flag (TensorRT 10.x only).",
        ),
    ] = RouteChoice.graph,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", dir_okay=False, help="JSON recipe of nodes kept in FP32 (FP16/INT8 conversion)."),
    ] = None,
    calib: Annotated[
        Path | None, typer.Option("--calib", file_okay=False, help="INT8 calibration images (as in `mopt quantize`).")
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option("--synthetic", help="Calibrate INT8 on this many generated images instead.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if an identical engine exists.")] = False,
) -> None:
    """Build a TensorRT engine and its JSON sidecar; an identical earlier build is reused."""
    precision = chosen_precision(fp32, fp16, int8)
    profiles = profiles_from_options(min_shape, opt_shape, max_shape, profile or [])
    converting = recipe is not None or calib is not None or synthetic is not None
    from optimize.identity import model_identity

    origin = None
    if onnx is None:
        onnx = default_build_onnx(precision, ENGINES_DIR, converting=converting)
        derived = onnx.name.endswith((".fp16.onnx", ".int8.onnx"))
        origin = (
            f"default: the {precision.upper()} model made from the newest export in {ENGINES_DIR}/"
            if derived and precision
            else f"default: the newest FP32 export in {ENGINES_DIR}/"
        )
    announce_models(model_identity(onnx, origin))
    result = engine_from_onnx(
        onnx,
        output,
        precision=precision,
        profiles=profiles,
        route=route.value,
        workspace_gib=workspace,
        opt_level=opt_level,
        timing_cache=timing_cache,
        recipe=recipe,
        calib_dir=calib,
        calib_synthetic=synthetic,
        force=force,
    )
    print_result(result)
