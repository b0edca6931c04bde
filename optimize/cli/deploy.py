"""``mopt deploy triton``: an engine or ONNX -> a Triton model repository for a production Triton server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from optimize.cli.common import announce_models, console
from optimize.defaults import DEFAULT_MODEL_NAME, DEFAULT_QUEUE_DELAY_US, InstanceKind
from optimize.identity import model_identity
from optimize.triton_releases import triton_match

GROUP = "deploy"
app = typer.Typer(no_args_is_help=True)


@app.callback()
def deploy() -> None:
    """Package a model for a serving system (Triton Inference Server)."""


@app.command("triton")
def triton(
    model: Annotated[
        Path, typer.Argument(dir_okay=False, help="TensorRT engine (.plan, with its .json sidecar) or ONNX model.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="Model repository folder.")],
    name: Annotated[str, typer.Option("--name", help="Model name in the repository.")] = DEFAULT_MODEL_NAME,
    version: Annotated[int, typer.Option("--version", min=1, help="Model version folder.")] = 1,
    max_batch: Annotated[
        int | None,
        typer.Option("--max-batch", min=1, help="Largest batch (default: the engine profile max batch; ONNX: 8)."),
    ] = None,
    max_queue_delay_us: Annotated[
        int, typer.Option("--max-queue-delay-us", min=0, help="Dynamic batcher wait to fill a batch (µs).")
    ] = DEFAULT_QUEUE_DELAY_US,
    instance_kind: Annotated[
        InstanceKind | None,
        typer.Option(
            "--kind",
            "--instance-kind",
            help="Run instances on GPUs or CPUs [gpu for an engine, or when an NVIDIA GPU is visible here; else cpu].",
        ),
    ] = None,
    instances: Annotated[int, typer.Option("--instances", min=1, help="Model instances per device.")] = 1,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace that version of the model, or the whole model when its I/O differs."),
    ] = False,
    triton_version: Annotated[
        str | None,
        typer.Option("--triton-version", help="Triton release (YY.MM) that will serve it: refused if its TensorRT "
                     "cannot load the engine."),
    ] = None,
) -> None:
    """Write OUTPUT/<name>/config.pbtxt and OUTPUT/<name>/<version>/model.plan|model.onnx for Triton.

    A new --version joins the versions already there when the model's inputs and outputs are the same.
    """
    from optimize.deploy import describe_config, instance_kind_name, read_model_config, triton_repository_from_model

    announce_models(model_identity(model))
    folder = triton_repository_from_model(
        model,
        output,
        name=name,
        version=version,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=instance_kind,
        instances=instances,
        force=force,
        triton_version=triton_version,
    )
    config = read_model_config(folder / "config.pbtxt")
    console.print(f"wrote {folder}/{version}/ ({describe_config(config)})")
    versions = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    if versions != [version]:
        console.print(f"versions of {config.name} in the repository: {', '.join(map(str, versions))}")
    group = config.instance_group[0]
    kind = instance_kind_name(config)
    if instance_kind is not None:
        why = f"--kind {instance_kind.value}"
    elif config.backend == "tensorrt":
        why = "a TensorRT engine runs on a GPU"
    elif kind == "KIND_GPU":
        why = "an NVIDIA GPU is visible here; --kind cpu for a CPU server"
    else:
        why = "no NVIDIA GPU visible here; --kind gpu for a GPU server"
    console.print(f"instances: {group.count} x {kind} ({why})")
    if config.backend == "tensorrt":
        tensorrt_version = config.parameters["mopt.tensorrt_version"].string_value or None
        console.print(escape(triton_match(tensorrt_version).advice()))
    console.print(f"serve it: tritonserver --model-repository {output.resolve()}")
