"""``mopt bench``: latency, throughput, memory and cost per backend x batch x size, in one run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.segment import Segments
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
    step_progress,
)
from optimize.cli.compare import NAME_WIDTH
from optimize.errors import MoptError
from optimize.fileio import write_json
from optimize.shapes import parse_ints, parse_sizes

if TYPE_CHECKING:  # the library modules import numpy, torch, ONNX: only inside the commands (fast `--help`)
    from optimize.backends import ModelSources
    from optimize.bench import BenchReport, BenchResult

app = typer.Typer()
DEFAULT_BACKENDS = "torch,onnxruntime,openvino"
DEFAULT_BENCH_SIZE = "512x512"


COMPACT_WIDTH = 80  # the compact table's budget: backend names fold to what the other columns leave


def _ms(value: float, wide: bool) -> str:
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if wide or value < 100 else f"{value:.0f}"


def _rate(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def fold_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters, broken after a ``-`` where it can be."""
    lines, line = [], ""
    for part in name.replace("-", "-\0").split("\0"):  # each part ends in its hyphen
        while len(part) > width:  # a part longer than a line is cut where the line ends
            room = width - len(line)
            lines.append(line + part[:room])
            line, part = "", part[room:]
        if len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join([*lines, line] if line else lines)


def _cells(r: BenchResult, wide: bool) -> dict[str, str]:
    from optimize.bench import p99_is_valid

    return {
        "backend": r.name,
        "device": r.device,
        "prec": r.precision,
        "batch": str(r.batch),
        "size": f"{r.height}x{r.width}",
        "runs": str(r.iterations),
        "min": _ms(r.min_ms, wide),
        "p50": _ms(r.p50_ms, wide),
        "p90": _ms(r.p90_ms, wide),
        "p99": _ms(r.p99_ms, wide) if p99_is_valid(r.iterations) else "-",
        "max": _ms(r.max_ms, wide),
        "mean": _ms(r.mean_ms, wide),
        "img/s": _rate(r.images_per_s),
        "MB": "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}",
        "$/1k": "-" if r.cost_per_1k_images_usd is None else f"{r.cost_per_1k_images_usd:.4f}",
        "compile s": "-" if r.compile_s is None else f"{r.compile_s:.1f}",
    }


# (cell, header) of the wide table: every column.
WIDE_COLUMNS = (
    ("backend", "backend"), ("device", "device"), ("prec", "prec"), ("batch", "batch"), ("size", "size"),
    ("runs", "runs"), ("min", "min ms"), ("p50", "p50 ms"), ("p90", "p90 ms"), ("p99", "p99 ms"), ("max", "max ms"),
    ("mean", "mean ms"), ("img/s", "img/s"), ("MB", "peak MB"), ("$/1k", "$/1k img"), ("compile s", "compile s"),
)  # fmt: skip


def _bench_columns(report: BenchReport, wide: bool) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows of cells and the legend; the compact form leaves out the columns no result has a value in."""
    from optimize.bench import p99_is_valid

    results = report.results
    cells = [_cells(r, wide) for r in results]
    if wide:
        return [h for _, h in WIDE_COLUMNS], [[c[key] for key, _ in WIDE_COLUMNS] for c in cells], []
    # The backend's name already says its device and precision (torch-cpu-fp32, tensorrt-fp16), and what every
    # row shares (one size, one number of runs) goes into the legend: the columns left are the measurements.
    sizes = {c["size"] for c in cells}
    runs = {r.iterations for r in results}
    columns = [("backend", "backend"), ("batch", "batch")]
    columns += [("size", "size")] if len(sizes) > 1 else []
    columns += [("runs", "runs")] if len(runs) > 1 else []
    columns += [("min", "min"), ("p50", "p50")]
    spread = "min/p50/max"
    if any(p99_is_valid(r.iterations) for r in results):
        columns.append(("p99", "p99"))
        spread = "min/p50/p99/max"
    columns += [("max", "max"), ("img/s", "img/s")]
    images = f"{next(iter(sizes))} images" if len(sizes) == 1 else "images"
    timed = f"{next(iter(runs))} timed runs" if len(runs) == 1 else "the timed runs (runs)"
    legend = [f"{spread}: ms per batch of {images} over {timed}", "img/s at p50"]
    optional = (
        ("MB", "MB", "MB: peak memory", [r.peak_mem_mb for r in results]),
        ("$/1k", "$/1k", "$/1k: USD per 1000 images", [r.cost_per_1k_images_usd for r in results]),
        ("compile s", "comp s", "comp s: the first call (compiling), not timed", [r.compile_s for r in results]),
    )
    for key, header, meaning, values in optional:
        if any(v is not None for v in values):
            columns.append((key, header))
            legend.append(meaning)
    return [h for _, h in columns], [[c[key] for key, _ in columns] for c in cells], legend


def print_bench(report: BenchReport, wide: bool = False, out: Console | None = None) -> None:
    """The results table (fits 80 columns, legend below it; or every column), speed-ups, warnings, skips.

    Args:
        report: from :func:`optimize.bench.bench_from_sources`.
        wide: one table with every column (device, precision, runs, p90, p99, mean; up to ~190 columns), printed
            at its full width even where the window is narrower (the terminal wraps its lines; no value is cut).
        out: where to print (the shared console by default).
    """
    from optimize.report import speedups

    out = out or console
    m = report.machine
    title = f"{m['cpu']} ({m['cores']} cores, {m['threads']} threads){' + ' + m['gpu'] if m.get('gpu') else ''}"
    headers, rows, legend = _bench_columns(report, wide)
    if wide:
        table = Table(title=escape(title))
        for header in headers:
            table.add_column(header, justify="left" if header in ("backend", "device", "prec") else "right")
    else:
        table = Table(title=escape(title), box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
        # The edges and the single spaces between columns, then the widest cell of every column but the name.
        others = sum(max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers) if i) if rows else 0
        name_width = max(8, min(NAME_WIDTH, COMPACT_WIDTH - 2 - (len(headers) - 1) - others))
        rows = [[escape(fold_name(row[0], name_width)), *row[1:]] for row in rows]
        for header in headers:
            table.add_column(header, justify="left" if header == "backend" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    if rows:
        natural = Measurement.get(out, out.options.update_width(1000), table).maximum
        if wide and natural > out.width:
            # Rich squeezes a table into the window with "…" in the cells: rendered at its own width instead.
            out.print(Segments(out.render(table, out.options.update_width(natural))), crop=False)
        else:
            out.print(table)
    else:
        out.print("[yellow]nothing was measured[/] (the reasons are below)")
    if legend and rows:
        out.print("; ".join(legend), highlight=False)
    results = [asdict(r) for r in report.results]
    ratios = [
        (result, ratio)
        for result, ratio in zip(results, speedups(results))
        if ratio["reference"] and ratio["speedup_p50"] and result["backend"] != "torch"
    ]
    if ratios:
        out.print("speed-up of the median latency vs eager PyTorch at the same batch and size:")
    for result, ratio in ratios:
        out.print(
            f"  {escape(result['name'])} batch {result['batch']} {result['height']}x{result['width']}: "
            f"{ratio['speedup_p50']:.2f}x vs {escape(ratio['reference'])}",
            highlight=False,
        )
    for r in report.results:
        if r.note:  # e.g. a CUDA graph that could not be captured: the time is of plain launches
            out.print(f"[yellow]{escape(r.label)}: {escape(r.note)}")
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for s in report.skipped:
        out.print(f"[dim]skipped {escape(s['backend'])}: {escape(s['reason'])}")


def bench_card(sources: ModelSources, loaded=None):
    """The card of the model bench measures (its first ONNX, else its checkpoint), or None if there is none.

    ``loaded`` is the checkpoint when the caller has read it already (it is not read a second time).
    """
    from optimize.onnx_model import card_of_onnx

    if sources.onnx:
        return card_of_onnx(sources.onnx[0])
    if loaded is not None:
        return loaded.card
    if sources.checkpoint is not None and sources.checkpoint.is_file():
        from optimize.checkpoint import load_checkpoint

        return load_checkpoint(sources.checkpoint, arch=sources.arch).card
    return None


@app.command("bench")
def bench(
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT_PATH,
    onnx: OnnxModelsOption = None,
    engine: EngineOption = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="Comma-separated backends (see docs) [torch,onnxruntime,openvino].")
    ] = None,
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,8",
    size: Annotated[
        str | None, typer.Option("--size", help="Comma-separated H x W sizes [512x512, or the model's fixed size].")
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs before timing.")] = 3,
    iterations: Annotated[int, typer.Option("--iterations", min=1, help="Timed runs per measurement.")] = 20,
    threads: ThreadsOption = None,
    price_per_hour: Annotated[
        float | None, typer.Option("--price-per-hour", min=0, help="Instance price, USD/h.")
    ] = None,
    arch: ArchOption = None,
    json_path: JsonOption = None,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Time an ONNX made from another checkpoint beside PyTorch anyway.")
    ] = False,
    wide: Annotated[bool, typer.Option("--wide", help="One table with every column (up to ~190 columns).")] = False,
) -> None:
    """Benchmark each backend at each batch and size after warm-up; print a table, optionally write JSON."""
    from optimize.backends import ModelSources, backend_spec
    from optimize.bench import bench_from_sources

    batches, sizes = parse_ints(batch, "--batch"), parse_sizes(size or DEFAULT_BENCH_SIZE)
    explicit_backend = backend is not None
    names = [b.strip() for b in (backend or DEFAULT_BACKENDS).split(",") if b.strip()]
    needs_onnx = any(n.startswith(("onnxruntime", "openvino")) for n in names)
    named_paths = [*(onnx or []), *([engine] if engine else [])]
    torch_used = any(n == "torch" or n.startswith("torch-") for n in names)
    if checkpoint != DEFAULT_CHECKPOINT_PATH or (explicit_backend and torch_used):
        named_paths.append(checkpoint)
    for path in named_paths:  # a path the user named (or the checkpoint a named torch backend needs) must exist
        if not path.is_file():
            raise MoptError(f"{path} does not exist; give an existing file or drop the backend that needs it")
    identities = []
    loaded = None
    if torch_used and checkpoint.is_file():
        from optimize.checkpoint import load_checkpoint
        from optimize.identity import checkpoint_identity

        loaded = load_checkpoint(checkpoint, arch=arch)
        default = "default: the bundled checkpoint" if checkpoint == DEFAULT_CHECKPOINT_PATH else None
        identities.append(checkpoint_identity(loaded, default).with_role("PyTorch backends"))
    named_onnx: list[tuple[Path, str | None]] = [(path, None) for path in onnx or []]
    if needs_onnx and not onnx:
        from optimize.artifacts import default_onnx_models

        # Timed beside PyTorch, the ONNX must be an export of that checkpoint, or the speed-ups compare two models.
        lineage = (loaded.sha256, str(checkpoint)) if loaded is not None and not allow_mismatch else None
        named_onnx = default_onnx_models(made_from=lineage)
    from optimize.identity import check_lineage, model_identity

    identities += [model_identity(path, why) for path, why in named_onnx]
    if engine is not None:
        identities.append(model_identity(engine))
    models = announce_models(*identities)
    if loaded is not None and not allow_mismatch:
        for path, _ in named_onnx:
            check_lineage(path, loaded.sha256, f"checkpoint {checkpoint}")
    sources = ModelSources(
        checkpoint=checkpoint,
        onnx=[path for path, _ in named_onnx],
        engine=engine,
        arch=arch,
        threads=threads,
    )
    # The model card says which sizes the model runs at: a fixed-size model is measured at its size.
    card = bench_card(sources, loaded)
    if card is not None and card.size.fixed and size is None:
        sizes = [tuple(card.size.fixed)]
    for height, width in sizes if card is not None else []:
        card.size.check(height, width, what="--size")
    if explicit_backend:  # a backend asked for by name that cannot run here is an error, not a skipped row
        for name in names:
            if reason := backend_spec(name).unavailable_reason(sources):
                raise MoptError(f"backend {name} cannot run here: {reason}")
    with step_progress("bench") as on_step:
        report = bench_from_sources(sources, names, batches, sizes, warmup, iterations, price_per_hour, on_step=on_step)
    report.models = models
    print_bench(report, wide=wide)
    if json_path:
        write_json(json_path, report.to_dict())
