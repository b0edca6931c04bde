"""``mopt compare``: Polygraphy comparison of every optimized model against the PyTorch FP32 reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from optimize.cli.common import (
    DEFAULT_CHECKPOINT_PATH,
    ArchOption,
    CheckpointOption,
    EngineOption,
    JsonOption,
    OnnxModelsOption,
    ThreadsOption,
    announce_models,
    console,
)
from optimize.errors import MoptError
from optimize.fileio import write_json
from optimize.shapes import parse_size

if TYPE_CHECKING:  # the library modules import torch, ONNX, Polygraphy: only inside the commands (fast `--help`)
    from optimize.compare import CompareReport

app = typer.Typer()


NAME_WIDTH = 22  # longer candidate names fold onto a second line, so the table fits 80 columns


def print_compare(report: CompareReport, wide: bool = False, out: Console | None = None) -> None:
    """The verdict table: fits 80 columns (tolerances and failures as lines below it), or one wide table.

    Args:
        report: from :func:`optimize.compare.compare_models`.
        wide: one row per candidate with its tolerance and failures in the table (needs ~150 columns).
        out: where to print (the shared console by default).
    """
    out = out or console
    image_model = any(c.psnr == c.psnr for c in report.candidates)  # PSNR is set (not NaN) for image models
    metric_columns = ("PSNR",) if image_model else ("SAD", "Grad", "Conn")
    if wide:
        table = Table(title=f"candidates vs reference {report.reference}")
        columns = ("candidate", "precision", "result", "max abs", "MAD", "MSE", *metric_columns, "tolerance")
    else:
        table = Table(
            title=f"candidates vs reference {report.reference}", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False
        )
        columns = ("candidate", "prec", "result", "max|d|", "MAD", "MSE", *metric_columns)
    for column in columns:
        left = column in ("candidate", "result", "tolerance")
        if column == "candidate" and not wide:
            table.add_column(column, max_width=NAME_WIDTH, overflow="fold")
        else:
            table.add_column(column, justify="left" if left else "right", no_wrap=column != "tolerance")
    number = "{:.2e}" if wide else "{:.1e}"
    for c in report.candidates:
        if wide:
            verdict = "[green]pass" if c.passed else "[red]FAIL: " + escape("; ".join(c.failures))
        else:
            verdict = "[green]pass" if c.passed else "[red]FAIL"
        cells = [escape(c.name), c.precision, verdict, number.format(c.max_abs), number.format(c.mad),
                 number.format(c.mse)]
        cells += [f"{c.psnr:.1f} dB"] if image_model else [f"{c.sad:.3f}", f"{c.grad:.3f}", f"{c.conn:.3f}"]
        if wide:
            cells.append(f"atol {c.atol:g} rtol {c.rtol:g} MAD<={c.mad_budget:g}")
        table.add_row(*cells)
    out.print(table)
    if wide:
        return
    out.print("tolerances (max|d|: the largest |candidate - reference|):")
    tolerances = {c.precision: c for c in report.candidates}
    for precision, c in tolerances.items():
        out.print(f"  {precision}: |d| <= atol {c.atol:g} + rtol {c.rtol:g} x |ref|, and MAD <= {c.mad_budget:g}")
    for c in report.candidates:
        if not c.passed:
            out.print(f"[red]FAIL[/] {escape(c.name)}: {escape('; '.join(c.failures))}")


@app.command("compare")
def compare(
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT_PATH,
    onnx: OnnxModelsOption = None,
    engine: EngineOption = None,
    images: Annotated[Path | None, typer.Option("--images", file_okay=False, help="Folder of real images.")] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference", dir_okay=False, help="Reference ONNX run in ONNX Runtime FP32 (instead of a checkpoint)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference.")] = 2,
    size: Annotated[
        str | None, typer.Option("--size", help="Input H x W [512x512, or the model's fixed size].")
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Images to compare.")] = 4,
    threads: ThreadsOption = None,
    arch: ArchOption = None,
    json_path: JsonOption = None,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Compare models made from another checkpoint anyway.")
    ] = False,
    wide: Annotated[
        bool, typer.Option("--wide", help="One wide table with tolerances and failures (about 150 columns).")
    ] = False,
) -> None:
    """Compare ONNX/TensorRT candidates with PyTorch FP32; exit 1 if any is out of tolerance."""
    from optimize.artifacts import default_onnx_models
    from optimize.backends import ModelSources
    from optimize.checkpoint import load_checkpoint
    from optimize.compare import (
        batched_inputs,
        candidates_from_sources,
        compare_models,
        reference_from_checkpoint,
        reference_from_onnx,
    )
    from optimize.identity import check_lineage, checkpoint_identity, model_identity
    from optimize.onnx_model import card_of_onnx, lineage_of

    for path, what in [(reference, "reference ONNX"), *((p, "ONNX model") for p in onnx or []), (engine, "engine")]:
        if path is not None and not path.is_file():  # a file the user named: an error, never a skipped row
            raise MoptError(f"{what} {path} does not exist; give the path of an existing file")
    if reference is not None:
        if not onnx and engine is None:
            raise MoptError("--reference needs candidates to compare with it: give --onnx (repeatable) or --engine")
        reference_id = model_identity(reference).with_role("reference, ONNX Runtime FP32")
        card = card_of_onnx(reference)
        checkpoint = None
        expected, origin = lineage_of(reference), f"reference {reference}"
    else:
        loaded = load_checkpoint(checkpoint, arch=arch)
        default = "default: the bundled checkpoint" if checkpoint == DEFAULT_CHECKPOINT_PATH else None
        reference_id = checkpoint_identity(loaded, default).with_role("reference, PyTorch FP32")
        card, expected, origin = loaded.card, loaded.sha256, f"checkpoint {checkpoint}"
    if onnx:
        named = [(path, None) for path in onnx]
    elif reference is None:  # the exports of this very checkpoint, never another model's that happens to be newer
        named = default_onnx_models(made_from=None if allow_mismatch else (loaded.sha256, str(checkpoint)))
    else:
        named = []
    identities = [reference_id, *(model_identity(path, why).with_role("candidate") for path, why in named)]
    if engine is not None:
        identities.append(model_identity(engine).with_role("candidate"))
    models = announce_models(*identities)
    if not allow_mismatch:
        for path, _ in named:
            check_lineage(path, expected, origin)
    sources = ModelSources(
        checkpoint=checkpoint, onnx=[path for path, _ in named], engine=engine, arch=arch, threads=threads
    )
    height, width = parse_size(size) if size else card.size.nearest(512, 512)
    card.size.check(height, width, what="--size")
    batch = min(batch, card.batch) if card.batch else batch
    inputs = batched_inputs(card, height, width, batch, count, images)
    candidates, skipped = candidates_from_sources(sources)
    description = {
        "images": str(images) if images else "generated composites",
        "count": sum(len(b) for b in inputs),  # a folder may hold fewer than --count
        "batch": batch,
        "size": f"{height}x{width}",
        "reference": str(reference) if reference else str(checkpoint),
    }
    ref = reference_from_onnx(reference, threads) if reference is not None else reference_from_checkpoint(sources)
    report = compare_models(ref, candidates, inputs, input_description=description)
    print_compare(report, wide=wide)
    for s in skipped:
        console.print(f"[dim]skipped {escape(s['backend'])}: {escape(s['reason'])}")
    if json_path:
        write_json(json_path, {"models": models, **report.to_dict(), "skipped": skipped})
    raise typer.Exit(0 if report.passed else 1)
