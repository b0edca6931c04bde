"""``mopt bench``: latency, throughput, memory and cost per backend x batch x size, in one run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
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
    progress,
)
from optimize.errors import MoptError
from optimize.fileio import write_json
from optimize.shapes import parse_ints, parse_sizes

if TYPE_CHECKING:  # the library modules import numpy, torch, ONNX: only inside the commands (fast `--help`)
    from optimize.backends import ModelSources
    from optimize.bench import BenchReport

app = typer.Typer()
DEFAULT_BACKENDS = "torch,onnxruntime,openvino"
DEFAULT_BENCH_SIZE = "512x512"


def print_bench(report: BenchReport) -> None:
    from optimize.report import speedups

    m = report.machine
    table = Table(
        title=f"{m['cpu']} ({m['cores']} cores, {m['threads']} threads){' + ' + m['gpu'] if m.get('gpu') else ''}"
    )
    for column in (
        "backend",
        "device",
        "prec",
        "batch",
        "size",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "img/s",
        "peak MB",
        "$/1k img",
        "compile s",
    ):
        table.add_column(column, justify="left" if column in ("backend", "device", "prec") else "right")
    for r in report.results:
        cost = "-" if r.cost_per_1k_images_usd is None else f"{r.cost_per_1k_images_usd:.4f}"
        mem = "-" if r.peak_mem_mb is None else f"{r.peak_mem_mb:.0f}"
        table.add_row(
            r.name,
            r.device,
            r.precision,
            str(r.batch),
            f"{r.height}x{r.width}",
            f"{r.p50_ms:.1f}",
            f"{r.p90_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.images_per_s:.2f}",
            mem,
            cost,
            "-" if r.compile_s is None else f"{r.compile_s:.1f}",
        )
    console.print(table)
    results = [asdict(r) for r in report.results]
    for result, ratio in zip(results, speedups(results)):
        if ratio["reference"] and ratio["speedup_p50"] and result["backend"] != "torch":
            console.print(
                f"{result['name']:30} batch {result['batch']:<3} {result['height']}x{result['width']}: "
                f"{ratio['speedup_p50']:.2f}x vs {ratio['reference']} (eager PyTorch, median latency)"
            )
    for r in report.results:
        if r.note:  # e.g. a CUDA graph that could not be captured: the time is of plain launches
            console.print(f"[yellow]{escape(r.name)} batch {r.batch} {r.height}x{r.width}: {escape(r.note)}")
    for s in report.skipped:
        console.print(f"[dim]skipped {escape(s['backend'])}: {escape(s['reason'])}")


def bench_card(sources: ModelSources):
    """The card of the model bench measures (its first ONNX, else its checkpoint), or None if there is none."""
    from optimize.onnx_model import card_of_onnx

    if sources.onnx:
        return card_of_onnx(sources.onnx[0])
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
    card = bench_card(sources)
    if card is not None and card.size.fixed and size is None:
        sizes = [tuple(card.size.fixed)]
    for height, width in sizes if card is not None else []:
        card.size.check(height, width, what="--size")
    if explicit_backend:  # a backend asked for by name that cannot run here is an error, not a skipped row
        for name in names:
            if reason := backend_spec(name).unavailable_reason(sources):
                raise MoptError(f"backend {name} cannot run here: {reason}")
    with progress() as bar:
        task = bar.add_task("bench", total=None)
        report = bench_from_sources(
            sources,
            names,
            batches,
            sizes,
            warmup,
            iterations,
            price_per_hour,
            on_step=lambda label: bar.update(task, description=label, advance=1),
        )
    report.models = models
    print_bench(report)
    if json_path:
        write_json(json_path, report.to_dict())
