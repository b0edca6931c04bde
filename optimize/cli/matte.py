"""``mopt matte``: batch background removal over files, folders and glob patterns."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from optimize.cli.common import ArchOption, ThreadsOption, announce_models, console
from optimize.defaults import DEFAULT_MATTE_CHECKPOINT, DEFAULT_PNG_COMPRESSION
from optimize.defaults import MATTE_DEFAULT_BATCH as DEFAULT_BATCH
from optimize.errors import MoptError

if TYPE_CHECKING:  # the library modules import numpy, PIL, the runtimes: only inside the command (fast `--help`)
    from optimize.backends import ModelSources
    from optimize.matte import MatteReport

app = typer.Typer()

FAILURES_SHOWN = 20  # the report JSON lists them all


class OutputKind(str, Enum):
    rgba = "rgba"
    alpha = "alpha"
    composite = "composite"


class Compression(str, Enum):
    fast = "fast"
    default = "default"
    small = "small"


DEFAULT_COMPRESSION = Compression(DEFAULT_PNG_COMPRESSION)


def model_sources(
    engine: Path | None, onnx: Path | None, checkpoint: Path | None, arch: str | None, threads: int | None
) -> tuple[ModelSources, list[dict]]:
    """The model files to choose a backend from (the ones given, else the bundled pretrained person model),
    announced, and their identities for the report.

    The default never depends on what happens to lie in ``engines/``: a run without a model named always
    uses the same, named model.
    """
    from optimize.backends import ModelSources
    from optimize.identity import model_identity

    for given in (engine, onnx, checkpoint):
        if given is not None and not given.is_file():
            raise MoptError(f"model file {given} does not exist; give the path of an existing model")
    if engine or onnx or checkpoint:
        named = [(path, kind) for path, kind in ((engine, None), (onnx, None), (checkpoint, "checkpoint")) if path]
        models = announce_models(*(model_identity(path, arch=arch, kind=kind) for path, kind in named))
        return ModelSources(
            checkpoint=checkpoint, onnx=[onnx] if onnx else [], engine=engine, arch=arch, threads=threads
        ), models
    from optimize.artifacts import bundled_model_onnx

    # The bundled checkpoint, exported once: ONNX Runtime or OpenVINO run it several times faster than PyTorch.
    onnx = bundled_model_onnx(checkpoint=DEFAULT_MATTE_CHECKPOINT)
    origin = f"default: the bundled MediaPipe selfie segmentation model, {DEFAULT_MATTE_CHECKPOINT.name} exported"
    models = announce_models(model_identity(onnx, origin))
    return ModelSources(onnx=[onnx], arch=arch, threads=threads), models


def fit_run_to_backend(choice, batch: int, max_side: int | None) -> tuple[int, int, int]:
    """Print the choice's notes and ``(batch, max_side, min_side)`` for the run, narrowed to what it accepts."""
    from optimize.matte import default_max_side

    for name, why in choice.skipped.items():
        console.print(f"[dim]  not used: {name}: {why}", highlight=False)
    for note in choice.notes:
        console.print(f"[yellow]note: {note}")
    max_side = default_max_side(choice.normalization, max_side)  # the card's preferred side by default
    run_batch, run_max_side, min_side = choice.fit(batch, max_side)
    if (run_batch, run_max_side) != (batch, max_side):
        console.print(f"[yellow]the engine's profile limits this run to --batch {run_batch} --max-side {run_max_side}")
    return run_batch, run_max_side, min_side


@contextlib.contextmanager
def matte_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per phase (scan, matte) with images/s; yields the callback the matte run reports to.

    Ctrl-C inside the block stops the bar, says that every output written is complete, and exits 130.
    """
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}
        started: dict[str, float] = {}

        def show(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task("scanning" if phase == "scan" else "matting", total=total, rate="")
                started[phase] = time.perf_counter()
            elapsed = time.perf_counter() - started[phase]
            rate = f"{done / elapsed:.1f} images/s" if phase == "matte" and done and elapsed > 0 else ""
            bar.update(tasks[phase], completed=done, total=total, rate=rate)

        try:
            yield show
        except KeyboardInterrupt:
            bar.stop()
            console.print("interrupted: every output written is complete; run the same command again to go on")
            raise typer.Exit(130) from None


def print_summary(report: MatteReport, report_path: Path | None) -> None:
    rate = f"{report.images_per_s:.2f} images/s" if report.processed else "no images processed"
    latency = f", latency p50 {report.p50_ms:.0f} ms, p99 {report.p99_ms:.0f} ms" if report.processed else ""
    redone = f" (redone: {report.redone} truncated outputs)" if report.redone else ""
    console.print(
        f"{report.processed} written{redone}, {report.skipped} already complete, {len(report.failed)} failed "
        f"in {report.wall_s:.1f} s: {rate}{latency}"
    )
    if report.failed:
        table = Table(title=f"{len(report.failed)} file(s) failed")
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for failure in report.failed[:FAILURES_SHOWN]:
            table.add_row(failure.path, failure.reason)
        if len(report.failed) > FAILURES_SHOWN:
            rest = f"see {report_path}" if report_path else "pass --report PATH to list them all"
            table.add_row(f"... {len(report.failed) - FAILURES_SHOWN} more", rest)
        console.print(table)


@app.command("matte")
def matte(
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders (recursive) and quoted glob patterns ('photos/**/*.jpg').")
    ],
    outdir: Annotated[
        # No file_okay=False: click would answer an existing file with a usage error (exit 2); the library
        # refuses it with a one-line MoptError instead.
        Path, typer.Option("--outdir", "-o", help="Output folder; the input folder structure is kept.")
    ],
    engine: Annotated[Path | None, typer.Option("--engine", dir_okay=False, help="TensorRT engine (.plan).")] = None,
    onnx: Annotated[
        Path | None, typer.Option("--onnx", dir_okay=False, help="ONNX model (ONNX Runtime or OpenVINO, the faster).")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            dir_okay=False,
            help="Checkpoint, run in PyTorch (no model named: the bundled selfie.pth, exported to ONNX once).",
        ),
    ] = None,
    output: Annotated[
        OutputKind,
        typer.Option(
            "--output", help="rgba: image + matte as alpha; alpha: 8-bit matte; composite: over --background."
        ),
    ] = OutputKind.rgba,
    background: Annotated[
        str | None, typer.Option("--background", help="Composite background, #RRGGBB (default: white).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference call.")] = DEFAULT_BATCH,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Threads decoding and encoding beside inference (default: CPU cores)."),
    ] = None,
    max_side: Annotated[
        int | None,
        typer.Option("--max-side", min=32, help="Longest side images are inferred at [the model's own, else 1024]."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo outputs that are already complete.")] = False,
    report_path: Annotated[
        Path | None, typer.Option("--report", dir_okay=False, help="Write the run report (failures, speed) as JSON.")
    ] = None,
    require_gpu: Annotated[
        bool, typer.Option("--require-gpu", help="Fail instead of falling back to a CPU backend.")
    ] = False,
    compression: Annotated[
        Compression, typer.Option("--compression", help="PNG compression (lossless at every level).")
    ] = DEFAULT_COMPRESSION,
    threads: ThreadsOption = None,
    arch: ArchOption = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="Backend to use (e.g. openvino, onnxruntime, tensorrt, torch) instead of the automatic choice; "
            "on a CPU the choice times OpenVINO against ONNX Runtime at the --max-side square.",
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option("--ray", help="Run as a Ray Data pipeline on a local Ray instance (or on --ray-address)."),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address", help="Join this Ray cluster: auto, ray://HOST:10001 or HEAD:6379 (implies --ray)."
        ),
    ] = None,
) -> None:
    """Remove the background of every image: outputs keep the folder structure; exit 1 if any file failed."""
    from optimize.backends import backend_spec
    from optimize.images import parse_color
    from optimize.matte import BACKEND_PREFERENCE, mattes_from_images, probe_size_for, select_backend
    from optimize.onnx_model import card_of_onnx

    if background is not None and output != OutputKind.composite:
        raise MoptError(f"--background only applies to --output composite (got --output {output.value})")
    color = parse_color(background) if background is not None else (255, 255, 255)
    sources, models = model_sources(engine, onnx, checkpoint, arch, threads)
    if ray or ray_address is not None:
        from optimize.cli.matte_ray import matte_on_ray

        raise typer.Exit(matte_on_ray(
            inputs, outdir, sources, address=ray_address, require_gpu=require_gpu, output=output.value,
            background=color, batch=batch, workers=workers, max_side=max_side, overwrite=overwrite,
            report_path=report_path, compression=compression.value, models=models,
        ))  # fmt: skip
    if backend is not None:
        backend_spec(backend)  # an unknown name fails here, listing the known ones
    choice = select_backend(
        sources,
        require_gpu=require_gpu,
        preference=(backend,) if backend else BACKEND_PREFERENCE,
        probe_size=probe_size_for(max_side, card_of_onnx(sources.onnx[0]) if sources.onnx else None),
    )
    with choice.backend:
        why = f", {choice.probe.describe()}" if choice.probe else (" (--backend)" if backend else "")
        console.print(f"backend: {choice.backend.name} ({choice.name}) on {choice.backend.device}{why}")
        run_batch, run_max_side, min_side = fit_run_to_backend(choice, batch, max_side)
        with matte_progress() as show:
            report = mattes_from_images(
                inputs,
                outdir,
                backend=choice.backend,
                normalization=choice.normalization,
                output=output.value,
                background=color,
                batch=run_batch,
                workers=workers,
                max_side=run_max_side,
                min_side=min_side,
                overwrite=overwrite,
                compression=compression.value,
                report_path=report_path,
                progress=show,
                models=models,
            )
    print_summary(report, report_path)
    raise typer.Exit(1 if report.failed else 0)
