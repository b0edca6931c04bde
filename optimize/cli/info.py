"""``mopt info``: parameters, GFLOPs and encoder channels of a checkpoint or an architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from optimize.cli.common import ArchOption, announce_models, console
from optimize.errors import MoptError
from optimize.shapes import parse_size

app = typer.Typer()


@app.command("info")
def info(
    checkpoint: Annotated[Path | None, typer.Argument(dir_okay=False, help="Checkpoint to describe.")] = None,
    arch: ArchOption = None,
    size: Annotated[str, typer.Option("--size", help="Input H x W for the GFLOPs count.")] = "512x512",
    list_models: Annotated[bool, typer.Option("--list", help="List the registered architectures.")] = False,
) -> None:
    """Print parameters, GFLOPs at --size and encoder channels per stage."""
    import architectures
    from optimize.checkpoint import load_checkpoint
    from optimize.modelinfo import info_from_model

    if list_models:
        for name in architectures.list_models():
            console.print(f"{name:20} {architectures.model_entry(name).description}")
        return
    height, width = parse_size(size)
    if checkpoint is not None:
        from optimize.identity import checkpoint_identity

        loaded = load_checkpoint(checkpoint, arch=arch)
        announce_models(checkpoint_identity(loaded))
        model, source = loaded.model, f"{checkpoint} (sha256 {loaded.sha256[:12]})"
        training = loaded.extra.get("train", {})
        card = loaded.card
    elif arch is not None:
        model, source, training = architectures.create_model(arch), "random initialisation", {}
        console.print(f"model: {arch} (no file: the architecture with random weights)", highlight=False)
        card = None
    else:
        raise MoptError("give a CHECKPOINT or --arch NAME (see `mopt info --list`)")
    if card is not None:
        card.size.check(height, width, what="--size")
    result = info_from_model(model, height, width)
    table = Table(title=f"{result.arch} — {source}", show_header=False)
    if card is not None:
        table.add_row("model card", card.describe())
    table.add_row("parameters", f"{result.parameters:,} ({result.parameters / 1e6:.2f} M)")
    table.add_row("weights (FP32)", f"{result.size_mb_fp32:.1f} MiB")
    table.add_row(f"GFLOPs at {height}x{width}", f"{result.gflops:.2f}")
    if result.encoder_channels:
        stages = ", ".join(f"/{s}: {c}" for s, c in zip(result.encoder_strides, result.encoder_channels))
        table.add_row("encoder channels", stages)
    for key in ("val_iou", "val_mad", "command", "date"):
        if key in training:
            value = training[key]
            table.add_row(f"training {key}", f"{value:.4f}" if isinstance(value, float) else str(value))
    earlier = training.get("init_train")
    while isinstance(earlier, dict):  # a fine-tune: list the stages it started from, latest first
        table.add_row("fine-tuned from", f"{earlier.get('command', '?')} (val IoU {earlier.get('val_iou', '?')})")
        earlier = earlier.get("init_train")
    console.print(table)
