"""``mopt import``: a model mopt did not define -> a mopt checkpoint or ONNX that carries its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from optimize.cli.common import console
from optimize.shapes import parse_size

app = typer.Typer()


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="Weights (.pth/.pt/.safetensors), an .onnx or a .tflite file.")],
    out: Annotated[
        Path, typer.Option("-o", "--out", help="The mopt checkpoint (.pth/.safetensors) or mopt ONNX (.onnx) to write.")
    ],
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch", help="Architecture of the weights: a registered name, smp:NAME or package.module:factory."
        ),
    ] = None,
    arch_args: Annotated[
        str | None, typer.Option("--arch-args", help='Its keyword arguments as a JSON object, e.g. \'{"classes": 1}\'.')
    ] = None,
    input_name: Annotated[str | None, typer.Option("--input-name", help="Input tensor name.")] = None,
    bgr: Annotated[bool | None, typer.Option("--bgr/--rgb", help="Channel order the model expects.")] = None,
    normalization: Annotated[
        str | None, typer.Option("--normalization", help="imagenet or none (instead of --mean/--std).")
    ] = None,
    mean: Annotated[str | None, typer.Option("--mean", help="Per-channel mean after scaling: 0.5,0.5,0.5.")] = None,
    std: Annotated[str | None, typer.Option("--std", help="Per-channel std after scaling: 0.229,0.224,0.225.")] = None,
    scale: Annotated[
        float | None, typer.Option("--scale", help="Pixel values are multiplied by it first [1/255].")
    ] = None,
    size: Annotated[str | None, typer.Option("--size", help="The one input size the model runs at, HxW.")] = None,
    size_multiple: Annotated[
        int | None, typer.Option("--size-multiple", help="H and W must be multiples of this.")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="The result among several outputs: a name, dict key or index.")
    ] = None,
    activation: Annotated[
        str | None, typer.Option("--activation", help="sigmoid (the output is logits) or none.")
    ] = None,
    output_channels: Annotated[
        int | None, typer.Option("--output-channels", help="1 (alpha matte) or 3 (image) [from a probe run].")
    ] = None,
) -> None:
    """Import SOURCE as a mopt model: the weights with their architecture, or an ONNX, and its I/O card."""
    from optimize.errors import MoptError
    from optimize.model_import import import_model, parse_arch_args

    if scale is not None and not scale > 0:
        raise MoptError(f"--scale must be positive, got {scale}")
    changes = {
        "input_name": input_name,
        "bgr": bgr,
        "normalization": normalization,
        "mean": mean,
        "std": std,
        "scale": scale,
        "size": parse_size(size) if size else None,
        "size_multiple": size_multiple,
        "output": output,
        "activation": activation,
        "output_channels": output_channels,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if source.is_file():  # the file is untrusted and of unknown kind until imported: its path and hash only
        from optimize.fileio import file_sha256
        from optimize.identity import SHA_PREFIX

        console.print(f"model: {source} (sha256 {file_sha256(source)[:SHA_PREFIX]}, to import)", highlight=False)
    result = import_model(source, out, arch, parse_arch_args(arch_args), changes)
    console.print(f"wrote {result.path}")
    console.print(f"card: {result.card.describe()}")
    console.print(f"probe: output {list(result.probe_shape)}")
    for note in result.notes:
        console.print(f"note: {note}")
