"""``mopt matte --ray``: the matte command's run on a local Ray instance or an existing Ray cluster."""

from __future__ import annotations

import contextlib
from pathlib import Path

from optimize.backends import ModelSources
from optimize.cli.common import console
from optimize.cli.matte import fit_run_to_backend, matte_progress, print_summary
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
    models: list[dict] | None = None,
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
        run_batch, run_max_side, min_side = fit_run_to_backend(choice, batch, max_side)
        plan = plan_actors(cluster.nodes, gpu=choice.backend.device != "cpu")
        console.print(f"actors: {plan.describe()}")
        with matte_progress() as show:
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
                models=models or (),
            )
    print_summary(report, report_path)
    if report.retried_batches:
        console.print(f"{report.retried_batches} batch(es) ran again after their Ray worker died")
    return 1 if report.failed else 0
