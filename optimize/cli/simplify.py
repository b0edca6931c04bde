"""``mopt simplify``: onnxsim with dynamic dims kept and outputs verified unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from optimize.artifacts import default_fp32_onnx
from optimize.cli.common import announce_models, console

app = typer.Typer()


@app.command("simplify")
def simplify(
    onnx_path: Annotated[
        Path | None, typer.Argument(dir_okay=False, help="ONNX model [the last export in engines/].")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", dir_okay=False, help="Output [<name>.sim.onnx].")
    ] = None,
) -> None:
    """Simplify ONNX_PATH with onnxsim; print node counts and the op histogram before and after."""
    from optimize.identity import model_identity
    from optimize.simplify import simplified_onnx_from_onnx

    source, origin = (onnx_path, None) if onnx_path else default_fp32_onnx(simplified=False)
    announce_models(model_identity(source, origin))
    result = simplified_onnx_from_onnx(source, output)
    table = Table(title=f"{source} -> {result.path}")
    table.add_column("op")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for op in sorted(set(result.ops_before) | set(result.ops_after), key=lambda o: -result.ops_before.get(o, 0)):
        table.add_row(op, str(result.ops_before.get(op, 0)), str(result.ops_after.get(op, 0)))
    table.add_row("[bold]nodes", f"[bold]{result.nodes_before}", f"[bold]{result.nodes_after}")
    console.print(table)
    console.print(f"outputs unchanged: max abs difference {result.max_abs:.1e}")
