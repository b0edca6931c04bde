"""``mopt bench-serve``: requests/s and latency percentiles of a running Triton server at several concurrencies."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from optimize.cli.common import JsonOption, console
from optimize.defaults import DEFAULT_HOST, DEFAULT_MODEL_NAME, DEFAULT_PORT
from optimize.fileio import write_json
from optimize.shapes import format_size, parse_ints, parse_size

if TYPE_CHECKING:  # optimize.serve imports numpy, PIL, Triton's client: only inside the command (fast `--help`)
    from optimize.serve import LoadResult

app = typer.Typer()


@app.command("bench-serve")
def bench_serve(
    url: Annotated[str, typer.Option("--url", help="HTTP endpoint of the server.")] = f"{DEFAULT_HOST}:{DEFAULT_PORT}",
    model: Annotated[str, typer.Option("--model", help="Encoded-image model name.")] = DEFAULT_MODEL_NAME,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma-separated client counts.")] = "1,4,16",
    requests: Annotated[int, typer.Option("--requests", min=1, help="Requests per concurrency level (at most).")] = 200,
    duration: Annotated[float, typer.Option("--duration", min=0.1, help="Seconds per level (at most).")] = 60.0,
    images: Annotated[
        Path | None, typer.Option("--images", file_okay=False, help="Images to send (default: synthetic JPEGs).")
    ] = None,
    size: Annotated[str, typer.Option("--size", help="Synthetic image size HxW (without --images).")] = "512x512",
    count: Annotated[int, typer.Option("--count", min=1, help="Distinct images to cycle through.")] = 16,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed requests per client before a level.")] = 2,
    json_path: JsonOption = None,
) -> None:
    """Load a running `mopt serve` with 1, 4, 16... clients (one image per request, back to back)."""
    from optimize.serve import encoded_images_from_folder, load_report, serve_load_from_url, synthetic_encoded_images

    # The file behind the model is the server's: `mopt serve` printed its path and sha256 when it started.
    console.print(f"model: {model!r} as served at {url} (`mopt serve` named its file and sha256 at start-up)",
                  highlight=False)
    levels = parse_ints(concurrency, "--concurrency")
    if images is not None:
        payloads = encoded_images_from_folder(images, limit=count)
        source = f"{len(payloads)} images from {images}"
    else:
        height, width = parse_size(size)
        payloads = synthetic_encoded_images(count, height, width)
        source = f"{count} synthetic {format_size(height, width)} JPEGs"
    console.print(f"loading {url} model {model!r} with {source}; levels {levels}, "
                  f"up to {requests} requests or {duration:g}s each")
    def on_level(clients: int, result: LoadResult | None) -> None:
        # A level may run its whole --duration: say which one runs, and what it measured, as it goes.
        if result is None:
            console.print(f"concurrency {clients}: sending up to {requests} requests or for {duration:g}s ...")
        else:
            console.print(
                f"concurrency {clients}: {result.requests} requests ({result.errors} errors) in "
                f"{result.seconds:.1f}s, {result.requests_per_s:.2f} req/s, p50 {result.p50_ms:.1f} ms"
            )
        sys.stdout.flush()  # a pipe (CI, tee) shows each level when it happens

    results = serve_load_from_url(
        url, payloads, concurrency=levels, requests=requests, duration_s=duration, model=model, warmup=warmup,
        on_level=on_level,
    )
    table = Table(title=f"{model} at {url}")
    for column in ("clients", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "batch"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            str(r.concurrency), str(r.requests), str(r.errors), f"{r.requests_per_s:.2f}", f"{r.p50_ms:.1f}",
            f"{r.p90_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}",
            "-" if r.mean_batch is None else f"{r.mean_batch:.1f}",
        )
    console.print(table)
    console.print("[dim]batch: mean images per model execution on the server (from Triton's statistics)")
    if json_path is not None:
        settings = {"url": url, "model": model, "images": source, "requests": requests, "duration_s": duration,
                    "warmup": warmup, "payload_bytes_mean": sum(map(len, payloads)) / len(payloads)}
        write_json(json_path, load_report(results, settings))
        console.print(f"wrote {json_path}")
