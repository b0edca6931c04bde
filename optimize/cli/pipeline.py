"""``mopt pipeline``: the main job behind ``make compare``, end to end on the bundled checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from optimize.cli.common import (
    DEFAULT_CHECKPOINT_PATH,
    CheckpointOption,
    ThreadsOption,
    announce_models,
    console,
    print_step,
)
from optimize.shapes import parse_ints, parse_size, parse_sizes

if TYPE_CHECKING:  # optimize.pipeline imports every stage's library: only inside the command (fast `--help`)
    from optimize.pipeline import Stage

app = typer.Typer()

STATUS_STYLE = {"ok": "[green]ok", "skipped": "[yellow]skipped", "failed": "[red]FAILED", "pending": "[dim]..."}


def show_stage(stage: Stage) -> None:
    if stage.status == "pending":
        console.print(f"[dim]-> {stage.name}")
    else:
        console.print(
            f"   {STATUS_STYLE[stage.status]}[/] {stage.name} ({stage.seconds:.1f} s): {escape(stage.detail)}"
        )


@app.command("pipeline")
def pipeline(
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT_PATH,
    report: Annotated[Path, typer.Option("--report", file_okay=False, help="Report folder.")] = Path("reports/latest"),
    images: Annotated[
        Path | None, typer.Option("--images", file_okay=False, help="Real images for compare and INT8 calibration.")
    ] = None,
    size: Annotated[str, typer.Option("--size", help="H x W for compare.")] = "512x512",
    bench_batch: Annotated[str, typer.Option("--bench-batch", help="Batch sizes to bench.")] = "1,8",
    bench_size: Annotated[str, typer.Option("--bench-size", help="Sizes to bench.")] = "512x512",
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Timed runs per measurement.")] = 6,
    threads: ThreadsOption = None,
    price_per_hour: Annotated[
        float | None, typer.Option("--price-per-hour", min=0, help="Instance price, USD/h.")
    ] = None,
) -> None:
    """Export, simplify, convert (FP16/INT8), build the TensorRT engine where possible, compare, bench, report."""
    from optimize.identity import model_identity
    from optimize.pipeline import PipelineSettings, run_pipeline

    origin = "default: the bundled checkpoint" if checkpoint == DEFAULT_CHECKPOINT_PATH else None
    announce_models(model_identity(checkpoint, origin, kind="checkpoint"))
    settings = PipelineSettings(
        checkpoint=checkpoint,
        report_dir=report,
        size=parse_size(size),
        bench_batches=tuple(parse_ints(bench_batch, "--bench-batch")),
        bench_sizes=tuple(parse_sizes(bench_size)),
        iterations=iterations,
        threads=threads,
        calibration_images=images,
        price_per_hour=price_per_hour,
    )
    with console.status("running the pipeline") as status:

        def bench_step(label: str, done: int, total: int) -> None:
            status.update(f"bench [{done + 1}/{total}]: {label}")

        # Off a terminal the status line is not drawn: each bench measurement is a plain line there instead.
        on_step = bench_step if console.is_terminal else print_step
        state = run_pipeline(settings, on_stage=show_stage, on_step=on_step)
    console.print(f"report: {report / 'summary.md'}, {report / 'latency.png'}")
    if not state.passed:
        failed = [s.name for s in state.stages if s.status == "failed"]
        console.print(f"[red]pipeline failed[/]: {', '.join(failed) or 'compare out of tolerance'}")
        raise typer.Exit(1)
    console.print("[green]pipeline passed")
