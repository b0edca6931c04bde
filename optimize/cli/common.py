"""Option types and console helpers shared by the command files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from optimize.defaults import DEFAULT_CHECKPOINT

if TYPE_CHECKING:
    from optimize.identity import ModelIdentity

console = Console()
if not console.is_terminal:
    # Piped or logged output (CI, make): Rich would wrap tables at 80 columns and truncate the numbers.
    console.width = 160

CheckpointOption = Annotated[
    Path,
    typer.Option("--checkpoint", "-c", dir_okay=False, help="Checkpoint (.pth or .safetensors)."),
]
ArchOption = Annotated[
    str | None, typer.Option("--arch", help="Architecture of a bare state dict (see `mopt info --list`).")
]
OnnxModelsOption = Annotated[
    list[Path] | None,
    typer.Option("--onnx", dir_okay=False, help="ONNX model(s), repeatable [the FP32, FP16, INT8 models in engines/]."),
]
EngineOption = Annotated[Path | None, typer.Option("--engine", dir_okay=False, help="TensorRT engine (.plan).")]
JsonOption = Annotated[Path | None, typer.Option("--json", dir_okay=False, help="Also write the results as JSON.")]
ThreadsOption = Annotated[
    int | None, typer.Option("--threads", min=1, help="CPU threads for PyTorch and ONNX Runtime.")
]

DEFAULT_CHECKPOINT_PATH = DEFAULT_CHECKPOINT


def progress() -> Progress:
    """A progress bar for steps that take more than a few seconds (transient: the table stays, not the bar)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def announce_models(*identities: ModelIdentity) -> list[dict]:
    """Print one ``model:`` line per file a command runs (before it runs them); return them for its JSON."""
    from rich.markup import escape

    for identity in identities:
        console.print(f"model: {escape(identity.describe())}", highlight=False)
    return [identity.to_dict() for identity in identities]


def print_step(label: str, done: int, total: int) -> None:
    """One plain progress line, ``[3/12] label``: the step about to run of those planned (logs, CI, pipes)."""
    console.print(f"[{done + 1}/{total}] {label}", markup=False, highlight=False)


@contextmanager
def step_progress(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """Progress of a planned run of steps, as a ``(label, done, total)`` callback to call before each step.

    On a terminal: a transient bar with done/total. Elsewhere a bar would print nothing until the end (Rich
    draws no live display off a terminal), so each step is one plain line instead.
    """
    if not console.is_terminal:
        yield print_step
        return
    with progress() as bar:
        task = bar.add_task(description, total=None)
        yield lambda label, done, total: bar.update(task, description=label, completed=done, total=total)
