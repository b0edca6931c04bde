"""``mopt serve``: a Triton Inference Server (PyTriton) that returns mattes for uploaded images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from optimize.cli.common import ThreadsOption, announce_models, console
from optimize.defaults import (
    DEFAULT_HOST,
    DEFAULT_INSTANCES,
    DEFAULT_MAX_QUEUE_DELAY_MS,
    DEFAULT_MODEL_NAME,
    DEFAULT_PORT,
    SIZE_STEP,
)

if TYPE_CHECKING:  # optimize.serve imports numpy, PIL, PyTriton: only inside the command (fast `--help`)
    from optimize.serve import ServerInfo

app = typer.Typer()


def print_ready(info: ServerInfo) -> None:
    """Where to send requests, printed once the models answer."""
    for note in info.notes:
        console.print(f"[yellow]note:[/] {note}")
    image_model, rgb_model = info.models
    console.print(f"serving with {info.backend}; dynamic batching up to {info.max_batch} images")
    console.print(f"  HTTP/REST  {info.url}   gRPC  {info.grpc_url}   metrics  {info.metrics_url}")
    console.print(f"  ready      GET  {info.url}/v2/health/ready")
    console.print(f"  images     POST {info.url}/v2/models/{image_model}/infer   (input 'image': encoded bytes)")
    console.print(f"  pixels     POST {info.url}/v2/models/{rgb_model}/infer   (input 'rgb': uint8 HxWx3)")
    console.print("  outputs    'alpha' uint8 HxW, 'alpha_png' PNG bytes, 'error' (empty when fine)")
    if info.log_file is not None:
        console.print(f"  Triton log {escape(str(info.log_file))}   (--verbose shows it here)")
    console.print("Ctrl-C or SIGTERM stops the server.")
    sys.stdout.flush()  # a supervisor reading a pipe sees the endpoints now, not at exit


@app.command("serve")
def serve(
    engine: Annotated[
        Path | None, typer.Option("--engine", dir_okay=False, help="TensorRT engine (.plan + .json sidecar).")
    ] = None,
    onnx: Annotated[Path | None, typer.Option("--onnx", dir_okay=False, help="ONNX model (ONNX Runtime).")] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="Backend name instead of the automatic choice (as `mopt matte`).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: all interfaces).")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="HTTP port.")] = DEFAULT_PORT,
    grpc_port: Annotated[
        int | None, typer.Option("--grpc-port", min=1, max=65535, help="gRPC port (default: --port + 1).")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=1, max=65535, help="Prometheus metrics port (default: --port + 2)."),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Model name (the uint8-tensor model is <name>_rgb).")] = (
        DEFAULT_MODEL_NAME
    ),
    max_batch: Annotated[
        int | None,
        typer.Option("--max-batch", min=1, help="Largest dynamic batch (default: the engine's profile max, else 8)."),
    ] = None,
    max_queue_delay_ms: Annotated[
        float, typer.Option("--max-queue-delay-ms", min=0, help="How long a request may wait to fill a batch.")
    ] = DEFAULT_MAX_QUEUE_DELAY_MS,
    max_side: Annotated[
        int | None,
        typer.Option(
            "--max-side", min=SIZE_STEP, help="Longest side images are inferred at [the model's own, else 1024]."
        ),
    ] = None,
    instances: Annotated[
        int, typer.Option("--instances", min=1, help="Model instances (overlap decoding with inference).")
    ] = DEFAULT_INSTANCES,
    threads: ThreadsOption = None,
    log_file: Annotated[
        Path | None,
        typer.Option("--log-file", dir_okay=False, help="Triton's own log [<tmp>/mopt-serve-<port>.log]."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Triton's own log on the console.")] = False,
) -> None:
    """Serve the model with Triton Inference Server: dynamic batching, health/ready endpoints, HTTP and gRPC."""
    from optimize.identity import model_identity
    from optimize.matte import probe_size_for
    from optimize.onnx_model import card_of_onnx
    from optimize.serve import (
        ServeOptions,
        check_ports_free,
        serve_model,
        served_model_from_files,
    )

    options = ServeOptions(
        host=host,
        port=port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        name=name,
        max_batch=max_batch,
        max_queue_delay_ms=max_queue_delay_ms,
        max_side=max_side,
        instances=instances,
        log_file=log_file,
        verbose=verbose,
    )
    check_ports_free(host, options.ports())  # before the model loads: a clash is reported at once
    origin = None
    if onnx is None and engine is None:
        from optimize.artifacts import bundled_model_onnx

        onnx = bundled_model_onnx()
        origin = "default: the bundled MediaPipe selfie segmentation model, exported"
    identity = None
    if (engine is None) != (onnx is None) and (given := engine or onnx).is_file():
        identity = model_identity(given, origin)  # printed before the probe, which takes a while
        announce_models(identity)
    model = served_model_from_files(
        onnx=onnx,
        engine=engine,
        backend=backend,
        threads=threads,
        probe_size=probe_size_for(max_side, card_of_onnx(onnx) if onnx is not None and onnx.is_file() else None),
        identity=identity,
    )
    if model.choice.probe is not None:
        console.print(f"backend: {model.backend.name}, {model.choice.probe.describe()}")
    console.print(f"starting Triton Inference Server for {escape(str(model.source))} ...")
    stats = serve_model(model, options, on_ready=print_ready)
    mean = stats.images / stats.batches if stats.batches else 0.0
    console.print(
        f"stopped: {stats.requests} requests ({stats.failed_requests} failed), {stats.images} images in "
        f"{stats.batches} dynamic batches (mean {mean:.1f} images per batch)"
    )
