"""``mopt train``: train a matting checkpoint on a folder of image/alpha pairs or on synthetic composites."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from optimize.defaults import DEFAULT_VALIDATION_COUNT
from optimize.shapes import parse_size

if TYPE_CHECKING:  # optimize.train imports torch: only inside the command (fast `--help`)
    from optimize.train import EpochReport

app = typer.Typer()


def _command_line(**options: object) -> str:
    """The canonical command that reproduces this run (recorded in the checkpoint)."""
    parts = ["mopt", "train"]
    for name, value in options.items():
        if value is None:
            continue
        flag = "-o" if name == "output" else f"--{name.replace('_', '-')}"
        parts += [flag, str(value)]
    return shlex.join(parts)


@app.command("train")
def train(
    output: Annotated[
        Path, typer.Option("--output", "-o", dir_okay=False, help="Checkpoint to write (.pth or .safetensors).")
    ],
    data: Annotated[
        Path | None,
        typer.Option(exists=True, file_okay=False, help="Folder with images/ and alphas/, matched by file stem."),
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option(min=1, help="Train on this many built-in synthetic composites instead of --data.")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="Registry architecture (default: --init's, else cvunet-mbv3-large).")
    ] = None,
    size: Annotated[
        str, typer.Option(help="Training crop HxW (the synthetic validation images are 192x192).")
    ] = "192x192",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training samples.")] = 10,
    batch: Annotated[int, typer.Option(min=1, help="Crops per optimizer step.")] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate of the one-cycle schedule (AdamW).")] = 2e-3,
    seed: Annotated[int, typer.Option(min=0, help="Seeds data, augmentation, shuffling and initialisation.")] = 0,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice).")] = None,
    init: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Checkpoint to start from (fine-tune or resume).")
    ] = None,
    validation: Annotated[
        int, typer.Option(min=1, help="Size of the built-in synthetic validation set (synthetic training only).")
    ] = DEFAULT_VALIDATION_COUNT,
    max_scale: Annotated[
        float,
        typer.Option(
            min=1.0, max=8.0,
            help="Synthetic training only: render samples at 1 to this many times the base size (log-uniform), "
            "so the model also sees the large objects and fine textures of high-resolution inputs.",
        ),
    ] = 1.0,
) -> None:
    """Train a matting model and save it as a mopt checkpoint, with its validation IoU and MAD recorded."""
    from optimize.train import checkpoint_from_training

    crop = parse_size(size)
    command = _command_line(
        data=data, synthetic=synthetic, arch=arch, size=f"{crop[0]}x{crop[1]}", epochs=epochs, batch=batch, lr=lr,
        seed=seed, threads=threads, init=init, validation=validation if synthetic is not None else None,
        max_scale=max_scale if max_scale != 1.0 else None, output=output,
    )
    console = Console(stderr=True)
    if init is not None:
        from optimize.identity import model_identity

        identity = model_identity(init, origin="--init: training starts from it", arch=arch, kind="checkpoint")
        console.print(f"model: {escape(identity.describe())}", highlight=False)
    else:
        console.print(f"model: {arch or 'cvunet-mbv3-large'} (no file: trained from random initialisation)")
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        data_task = progress.add_task("generate", total=synthetic or 0, info="", visible=synthetic is not None)
        train_task = progress.add_task("train", total=None, info="", visible=False)

        def on_data(done: int, total: int) -> None:
            progress.update(data_task, completed=done)

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(train_task, total=total, completed=step, info=f"loss {loss:.4f}", visible=True)

        def on_epoch(report: EpochReport) -> None:
            progress.console.print(
                f"epoch {report.epoch}/{report.epochs}  loss {report.train_loss:.4f}  "
                f"val IoU@0.5 {report.val_iou:.4f}  MAD {report.val_mad * 1e3:.2f}e-3  "
                f"lr {report.lr:.2e}  {report.seconds:.0f}s"
            )

        result = checkpoint_from_training(
            output, data=data, synthetic=synthetic, arch=arch, size=crop, epochs=epochs, batch_size=batch, lr=lr,
            seed=seed, threads=threads, init=init, validation=validation, max_scale=max_scale, command=command,
            on_step=on_step, on_epoch=on_epoch, on_data=on_data,
        )
    typer.echo(
        f"wrote {result.path} ({result.arch}): val IoU@0.5 {result.val_iou:.4f}, MAD {result.val_mad:.5f} "
        f"on {result.val_count} validation samples, {result.seconds / 60:.1f} min"
    )
