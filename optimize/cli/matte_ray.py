"""``mopt matte --ray``: the matte command's run on a local Ray instance or an existing Ray cluster."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from optimize.backends import ModelSources
from optimize.cli.common import console
from optimize.cli.matte import print_summary
from optimize.matte import default_max_side
from optimize.matte_ray import backend_loader, backend_on_cluster, mattes_from_images_on_ray, plan_actors, ray_cluster


def matte_on_ray(
    inputs: list[str],
    outdir: Path,
    sources: ModelSources,
    *,
    address: str | None,
    require_gpu: bool,
    output: str,
    background: tuple[int, int, int],
    batch: int,
    workers: int | None,
    max_side: int | None,
    overwrite: bool,
    report_path: Path | None,
    compression: str,
) -> int:
    """Start or join Ray, choose the backend on a worker, run, print the summary.

    Returns:
        The exit code: 1 if any file failed, else 0 (an interruption exits 130 from here).
    """
    load = backend_loader(sources, require_gpu=require_gpu)
    with contextlib.ExitStack() as stack:
        with console.status("starting Ray" if address is None else f"joining the Ray cluster at {address}"):
            cluster = stack.enter_context(ray_cluster(address))
        console.print(f"ray: {cluster.describe()}")
        with console.status("loading the model on a Ray worker"):
            choice = backend_on_cluster(cluster, load)
        console.print(f"backend: {choice.backend.name} ({choice.name}) on {choice.backend.device}, on every actor")
        for name, why in choice.skipped.items():
            console.print(f"[dim]  not used: {name}: {why}", highlight=False)
        for note in choice.notes:
            console.print(f"[yellow]note: {note}")
        max_side = default_max_side(choice.normalization, max_side)  # as plain matte: the card's side by default
        run_batch, run_max_side, min_side = choice.fit(batch, max_side)
        if (run_batch, run_max_side) != (batch, max_side):
            console.print(
                f"[yellow]the engine's profile limits this run to --batch {run_batch} --max-side {run_max_side}"
            )
        plan = plan_actors(cluster.nodes, gpu=choice.backend.device != "cpu")
        console.print(f"actors: {plan.describe()}")
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
                report = mattes_from_images_on_ray(
                    inputs,
                    outdir,
                    cluster=cluster,
                    load=load,
                    choice=choice,
                    output=output,
                    background=background,
                    batch=run_batch,
                    workers=workers,
                    max_side=run_max_side,
                    min_side=min_side,
                    overwrite=overwrite,
                    compression=compression,
                    report_path=report_path,
                    progress=show,
                    plan=plan,
                )
            except KeyboardInterrupt:
                bar.stop()
                console.print("interrupted: every output written is complete; run the same command again to go on")
                raise typer.Exit(130) from None
    print_summary(report, report_path)
    if report.retried_batches:
        console.print(f"{report.retried_batches} batch(es) ran again after their Ray worker died")
    return 1 if report.failed else 0
