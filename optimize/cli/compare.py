"""``mopt compare``: Polygraphy comparison of every optimized model against the PyTorch FP32 reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from optimize.artifacts import ENGINES_DIR, derived_path, latest_fp32_onnx
from optimize.backends import ModelSources
from optimize.checkpoint import load_checkpoint
from optimize.cli.common import (
    DEFAULT_CHECKPOINT_PATH,
    ArchOption,
    CheckpointOption,
    EngineOption,
    JsonOption,
    OnnxModelsOption,
    ThreadsOption,
    console,
)
from optimize.compare import (
    CompareReport,
    batched_inputs,
    candidates_from_sources,
    compare_models,
    reference_from_checkpoint,
)
from optimize.fileio import write_json
from optimize.shapes import parse_size

app = typer.Typer()


def default_onnx_models() -> list[Path]:
    """The FP32 model left in engines/ plus its FP16 and INT8 versions when they were made."""
    fp32 = latest_fp32_onnx(ENGINES_DIR)
    return [fp32] + [p for p in (derived_path(fp32, "fp16"), derived_path(fp32, "int8")) if p.exists()]


def print_compare(report: CompareReport) -> None:
    table = Table(title=f"candidates vs reference {report.reference}")
    for column in ("candidate", "precision", "result", "max abs", "MAD", "MSE", "SAD", "Grad", "Conn", "tolerance"):
        table.add_column(column, justify="left" if column in ("candidate", "result", "tolerance") else "right")
    for c in report.candidates:
        verdict = "[green]pass" if c.passed else "[red]FAIL: " + escape("; ".join(c.failures))
        table.add_row(
            c.name,
            c.precision,
            verdict,
            f"{c.max_abs:.2e}",
            f"{c.mad:.2e}",
            f"{c.mse:.2e}",
            f"{c.sad:.3f}",
            f"{c.grad:.3f}",
            f"{c.conn:.3f}",
            f"atol {c.atol:g} rtol {c.rtol:g} MAD<={c.mad_budget:g}",
        )
    console.print(table)


@app.command("compare")
def compare(
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT_PATH,
    onnx: OnnxModelsOption = None,
    engine: EngineOption = None,
    images: Annotated[Path | None, typer.Option("--images", file_okay=False, help="Folder of real images.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference.")] = 2,
    size: Annotated[str, typer.Option("--size", help="Input H x W.")] = "512x512",
    count: Annotated[int, typer.Option("--count", min=1, help="Images to compare.")] = 4,
    threads: ThreadsOption = None,
    arch: ArchOption = None,
    json_path: JsonOption = None,
) -> None:
    """Compare ONNX/TensorRT candidates with PyTorch FP32; exit 1 if any is out of tolerance."""
    height, width = parse_size(size)
    loaded = load_checkpoint(checkpoint, arch=arch)
    sources = ModelSources(
        checkpoint=checkpoint, onnx=list(onnx or default_onnx_models()), engine=engine, arch=arch, threads=threads
    )
    inputs = batched_inputs(loaded.normalization, height, width, batch, count, images)
    candidates, skipped = candidates_from_sources(sources)
    description = {
        "images": str(images) if images else "generated composites",
        "count": count,
        "batch": batch,
        "size": size,
    }
    report = compare_models(reference_from_checkpoint(sources), candidates, inputs, input_description=description)
    print_compare(report)
    for s in skipped:
        console.print(f"[dim]skipped {escape(s['backend'])}: {escape(s['reason'])}")
    if json_path:
        write_json(json_path, {**report.to_dict(), "skipped": skipped})
    raise typer.Exit(0 if report.passed else 1)
