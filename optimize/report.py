"""The report folder of the main job (``make compare``): ``summary.md`` and ``latency.png``.

Inputs are the plain dicts that the other commands write as JSON (stage records, the compare result, the bench
result, a machine description); this module reads nothing else, so a report can be rebuilt from saved JSON.
Every input is validated before anything is written: a malformed input raises :class:`MoptError` and leaves the
report folder as it was.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from optimize.bench import P99_MIN_RUNS, p99_is_valid
from optimize.errors import MoptError
from optimize.fileio import atomic_output, write_text
from optimize.metrics import ALPHA_STEP

STAGE_STATUSES = ("ok", "skipped", "failed")
REFERENCE_BACKEND = "torch"
REFERENCE_PRECISION = "fp32"
SUMMARY_NAME = "summary.md"
CHART_NAME = "latency.png"

_CANDIDATE_METRICS = ("max_abs", "mean_abs", "mad", "mse", "sad", "grad", "conn")
_BENCH_TIMINGS = ("p50_ms", "p90_ms", "p99_ms", "images_per_s")


# ----------------------------------------------------------------------------------------------- validation


def _is_number(value: Any) -> bool:
    # bool is an int subclass; a True where a latency belongs is a schema bug, not 1 ms.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require(record: Any, where: str, spec: Mapping[str, tuple[str, bool]]) -> None:
    """Check ``record`` against ``spec``: key -> (kind, nullable); kinds are str, bool, int, number."""
    if not isinstance(record, Mapping):
        raise MoptError(f"{where} must be an object, got {type(record).__name__}")
    for key, (kind, nullable) in spec.items():
        if key not in record:
            raise MoptError(f"{where} lacks {key!r} (expected keys: {', '.join(spec)})")
        value = record[key]
        if value is None and nullable:
            continue
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool) and value > 0,
            "number": _is_number(value),
            "timing": _is_number(value) and math.isfinite(value) and value > 0,
        }[kind]
        if not ok:
            expected = {"int": "a positive integer", "timing": "a positive finite number"}.get(kind, kind)
            raise MoptError(f"{where}.{key} is {value!r}; expected {expected}{' or null' if nullable else ''}")


def _validate_stages(stages: Any) -> None:
    if not isinstance(stages, Sequence) or isinstance(stages, str):
        raise MoptError(f"stages must be a list of stage records, got {type(stages).__name__}")
    spec = {"name": ("str", False), "status": ("str", False), "detail": ("str", False)}
    for i, stage in enumerate(stages):
        _require(stage, f"stages[{i}]", spec)
        if stage["status"] not in STAGE_STATUSES:
            raise MoptError(f"stages[{i}].status is {stage['status']!r}; expected one of {', '.join(STAGE_STATUSES)}")
        # seconds and artifact may be left out as well as null: a stage skipped before it started has neither.
        optional = {"seconds": None, "artifact": None, **stage}
        _require(optional, f"stages[{i}]", {"seconds": ("number", True), "artifact": ("str", True)})


def _validate_compare(compare: Any) -> None:
    if compare is None:
        return
    _require(compare, "compare", {"passed": ("bool", False), "reference": ("str", False)})
    candidates = compare.get("candidates")
    if not isinstance(candidates, Sequence) or isinstance(candidates, str):
        raise MoptError("compare.candidates must be a list of candidate records")
    spec: dict[str, tuple[str, bool]] = {
        "name": ("str", False),
        "precision": ("str", False),
        "passed": ("bool", False),
        "atol": ("number", False),
        "rtol": ("number", False),
    }
    # Metrics may be null: a candidate that crashed or produced NaNs has no meaningful value to print.
    spec.update({metric: ("number", True) for metric in _CANDIDATE_METRICS})
    for i, candidate in enumerate(candidates):
        _require(candidate, f"compare.candidates[{i}]", spec)


def _validate_bench(bench: Any) -> None:
    if bench is None:
        return
    if not isinstance(bench, Mapping):
        raise MoptError(f"bench must be an object, got {type(bench).__name__}")
    if not isinstance(bench.get("machine", {}), Mapping):
        raise MoptError("bench.machine must be an object")
    results = bench.get("results")
    if not isinstance(results, Sequence) or isinstance(results, str):
        raise MoptError("bench.results must be a list of result records")
    spec: dict[str, tuple[str, bool]] = {
        "backend": ("str", False),
        "device": ("str", False),
        "precision": ("str", False),
        "batch": ("int", False),
        "height": ("int", False),
        "width": ("int", False),
        **{timing: ("timing", False) for timing in _BENCH_TIMINGS},
        # Not every backend can measure memory, and cost needs a price per hour: both may be null.
        "peak_mem_mb": ("number", True),
        "cost_per_1k_images_usd": ("number", True),
    }
    # The spread and the number of runs came later than the first bench JSON: absent is fine, wrong is not.
    optional = {"min_ms": ("timing", True), "max_ms": ("timing", True), "iterations": ("int", True)}
    for i, result in enumerate(results):
        _require(result, f"bench.results[{i}]", spec)
        if isinstance(result, Mapping):
            _require({key: None for key in optional} | dict(result), f"bench.results[{i}]", optional)
    warnings = bench.get("warnings", [])
    if not isinstance(warnings, Sequence) or isinstance(warnings, str) or not all(isinstance(w, str) for w in warnings):
        raise MoptError("bench.warnings must be a list of strings")


def _validate_summary(summary: Any) -> None:
    if not isinstance(summary, Mapping):
        raise MoptError(f"the report summary must be an object, got {type(summary).__name__}")
    if not isinstance(summary.get("machine", {}), Mapping):
        raise MoptError("summary.machine must be an object")
    _validate_stages(summary.get("stages", []))
    _validate_compare(summary.get("compare"))
    _validate_bench(summary.get("bench"))


# ----------------------------------------------------------------------------------------------- speed-ups


def backend_label(result: Mapping[str, Any]) -> str:
    """How a bench result's backend is named in tables and the chart legend, e.g. ``torch fp32 (cpu)``."""
    return f"{result['backend']} {result['precision']} ({result['device']})"


def _reference_rank(result: Mapping[str, Any]) -> int | None:
    """0 for eager FP32 torch on CPU, 1 for eager FP32 torch elsewhere, None for a non-reference backend."""
    if result["backend"] != REFERENCE_BACKEND or result["precision"] != REFERENCE_PRECISION:
        return None
    return 0 if str(result["device"]).lower().startswith("cpu") else 1


def speedups(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Speed-up of every bench result over the reference backend at the same batch and size, from this run.

    The reference is eager PyTorch FP32 (``torch`` on CPU when the run has it, else ``torch`` FP32 on any
    device): the model as it was before optimization. Ratios are only taken within one run because latency
    on a shared machine varies between runs more than some of the differences being measured.

    Args:
        results: the ``results`` list of a bench JSON.

    Returns:
        One dict per result, in order: ``reference`` (its label, or None when the run has no reference at
        that batch/size), ``speedup_p50`` (reference p50 / this p50) and ``throughput_ratio``
        (this images/s / reference images/s); the ratios are None without a reference.
    """
    references: dict[tuple[int, int, int], tuple[int, Mapping[str, Any]]] = {}
    for result in results:
        rank = _reference_rank(result)
        key = (result["batch"], result["height"], result["width"])
        if rank is not None and (key not in references or rank < references[key][0]):
            references[key] = (rank, result)
    out = []
    for result in results:
        ref = references.get((result["batch"], result["height"], result["width"]))
        if ref is None:
            out.append({"reference": None, "speedup_p50": None, "throughput_ratio": None})
            continue
        ref_result = ref[1]
        out.append(
            {
                "reference": backend_label(ref_result),
                "speedup_p50": ref_result["p50_ms"] / result["p50_ms"],
                "throughput_ratio": result["images_per_s"] / ref_result["images_per_s"],
            }
        )
    return out


# ----------------------------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    """A table cell: pipes escaped and newlines folded, so free-form details cannot break the table."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>").strip()


def _num(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _machine_section(summary: Mapping[str, Any]) -> list[str]:
    machine = dict(summary.get("machine") or {})
    bench_machine = dict((summary.get("bench") or {}).get("machine") or {})
    lines = ["## Machine", ""]
    if not machine and not bench_machine:
        return [*lines, "Not recorded.", ""]
    rows = [[_cell(key), _cell(value if value is not None else "—")] for key, value in machine.items()]
    lines += _table(["", "value"], rows) if rows else []
    # The bench may have run elsewhere (a GPU runner) than the rest of the pipeline; say so rather than merge.
    if bench_machine and bench_machine != machine:
        rows = [[_cell(key), _cell(value if value is not None else "—")] for key, value in bench_machine.items()]
        lines += ["", "Benchmark machine:", "", *_table(["", "value"], rows)]
    return [*lines, ""]


def _stages_section(stages: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Stages", ""]
    if not stages:
        return [*lines, "No stages were recorded.", ""]
    rows = []
    for stage in stages:
        status = {"ok": "ok", "skipped": "skipped", "failed": "**FAILED**"}[stage["status"]]
        artifact = f"`{_cell(stage['artifact'])}`" if stage.get("artifact") else "—"
        rows.append([_cell(stage["name"]), status, _num(stage.get("seconds"), ".1f"), artifact, _cell(stage["detail"])])
    return [*lines, *_table(["stage", "status", "time (s)", "artifact", "detail / skip reason"], rows), ""]


def _compare_section(compare: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Accuracy against the reference (compare)", ""]
    if compare is None:
        return [*lines, "Not run: see the compare stage above.", ""]
    verdict = "**PASSED**" if compare["passed"] else "**FAILED**"
    inputs = compare.get("inputs") or {}
    judged_on = inputs.get("images", "unrecorded inputs")
    if inputs.get("count") or inputs.get("size"):
        judged_on += f" ({inputs.get('count', '?')} images at {inputs.get('size', '?')})"
    lines += [
        f"Reference: `{_cell(compare['reference'])}`. Overall: {verdict}. Judged on: {_cell(judged_on)}.",
        "",
        "A candidate passes when every output element is within its absolute/relative tolerance (atol/rtol, set "
        "per precision: FP16 and INT8 cannot meet FP32's). The matte metrics say whether a difference matters: "
        f"one 8-bit alpha step is 1/255 ≈ {ALPHA_STEP:.2e}, and a max |Δ| within it is a visually identical "
        "matte. MAD is ×1e3; SAD, Grad and Conn are /1000 as in the matting benchmarks.",
        "",
    ]
    if not compare["candidates"]:
        return [*lines, "No candidates were compared.", ""]
    header = ["candidate", "precision", "atol", "rtol", "max \\|Δ\\|", "mean \\|Δ\\|", "≤ 1/255", "MAD×1e3", "MSE"]
    header += ["SAD", "Grad", "Conn", "result"]
    rows = []
    for c in compare["candidates"]:
        max_abs = c["max_abs"]
        within = "—" if max_abs is None or not math.isfinite(max_abs) else ("yes" if max_abs <= ALPHA_STEP else "no")
        mad_e3 = None if c["mad"] is None else c["mad"] * 1e3
        metrics = [_num(max_abs), _num(c["mean_abs"]), within, _num(mad_e3), _num(c["mse"]), _num(c["sad"])]
        metrics += [_num(c["grad"]), _num(c["conn"])]
        result = "pass" if c["passed"] else "**FAIL**"
        rows.append([_cell(c["name"]), _cell(c["precision"]), _num(c["atol"]), _num(c["rtol"]), *metrics, result])
    return [*lines, *_table(header, rows), ""]


def _sorted_results(results: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], dict[str, Any]]]:
    paired = list(zip(results, speedups(results), strict=True))
    return sorted(paired, key=lambda pair: (pair[0]["height"], pair[0]["width"], pair[0]["batch"]))


def _bench_section(bench: Mapping[str, Any] | None, chart: bool) -> list[str]:
    lines = ["## Speed (bench)", ""]
    if bench is None or not bench["results"]:
        return [*lines, "Not run: see the bench stage above.", ""]
    header = ["backend", "precision", "device", "batch", "size", "runs", "min ms", "p50 ms", "p90 ms", "p99 ms"]
    header += ["max ms", "images/s", "peak MB", "$ / 1k images", "compile s", "speed-up vs eager (p50)"]
    header += ["throughput × vs eager"]
    rows = []
    references = set()
    for r, ratio in _sorted_results(bench["results"]):
        if ratio["reference"]:
            references.add(ratio["reference"])
        speedup = "—" if ratio["speedup_p50"] is None else f"{ratio['speedup_p50']:.2f}×"
        throughput = "—" if ratio["throughput_ratio"] is None else f"{ratio['throughput_ratio']:.2f}×"
        runs = r.get("iterations")
        # A p99 of fewer runs is the slowest run: not shown (a result without its count keeps its p99).
        p99 = "—" if runs is not None and not p99_is_valid(runs) else _num(r["p99_ms"], ".2f")
        row = [_cell(r["backend"]), _cell(r["precision"]), _cell(r["device"]), str(r["batch"])]
        row += [f"{r['height']}x{r['width']}", _num(runs, "d"), _num(r.get("min_ms"), ".2f"), _num(r["p50_ms"], ".2f")]
        row += [_num(r["p90_ms"], ".2f"), p99, _num(r.get("max_ms"), ".2f"), _num(r["images_per_s"], ".1f")]
        row += [_num(r["peak_mem_mb"], ".0f"), _num(r["cost_per_1k_images_usd"], ".4f")]
        row += [_num(r.get("compile_s"), ".1f"), speedup, throughput]
        rows.append(row)
    lines += _table(header, rows)
    lines += [
        "",
        "min / p50 / max are the fastest, median and slowest of the timed runs (runs); p99 is shown from "
        f"{P99_MIN_RUNS} runs on.",
    ]
    if bench.get("warnings"):
        lines += ["", "Warnings:", "", *(f"- {_cell(warning)}" for warning in bench["warnings"])]
    if references:
        names = ", ".join(f"`{_cell(name)}`" for name in sorted(references))
        lines += [
            "",
            f"Speed-ups are against the eager PyTorch FP32 reference ({names}) at the same batch and size, in "
            "this run: speed-up = reference p50 / p50, throughput × = images/s / reference images/s.",
        ]
    else:
        lines += ["", "No eager PyTorch FP32 (`torch`) result in this run, so no speed-ups are given."]
    if chart:
        lines += ["", f"![p50 latency and throughput per backend]({CHART_NAME})"]
    return [*lines, ""]


def markdown_report(summary: Mapping[str, Any]) -> str:
    """Render the report as Markdown.

    Args:
        summary: ``{"machine": {...}, "stages": [...], "compare": {...} | None, "bench": {...} | None}``,
            optionally with ``"generated_at"`` (a string) and ``"chart"`` (True to link ``latency.png``).

    Returns:
        The Markdown text: machine, stages (with skip reasons), accuracy and speed sections.

    Raises:
        MoptError: an input does not follow its JSON schema; the message names the offending field.
    """
    _validate_summary(summary)
    stages = summary.get("stages", [])
    lines = ["# mopt report", ""]
    if summary.get("generated_at"):
        lines += [f"Generated {_cell(summary['generated_at'])}.", ""]
    failed = [s["name"] for s in stages if s["status"] == "failed"]
    compare = summary.get("compare")
    if failed:
        lines += [f"**Failed stages: {', '.join(_cell(name) for name in failed)}.**", ""]
    if compare is not None:
        lines += [f"Accuracy check: {'**PASSED**' if compare['passed'] else '**FAILED**'}.", ""]
    lines += _machine_section(summary)
    lines += _stages_section(stages)
    lines += _compare_section(compare)
    lines += _bench_section(summary.get("bench"), bool(summary.get("chart")))
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------- chart


def _skip_reason(stages: Sequence[Mapping[str, Any]], name: str) -> str | None:
    for stage in stages:
        if stage["name"] == name and stage["status"] != "ok":
            return f"{name} {stage['status']}: {stage['detail']}"
    return None


def latency_chart_png(bench: Mapping[str, Any] | None, note: str | None = None) -> bytes:
    """Draw p50 latency (top row) and images/s (bottom row) against batch, one column per input size.

    Args:
        bench: a bench JSON dict, or None; without results the image says so (with ``note``) instead.
        note: why there are no results, e.g. the bench stage's skip reason.

    Returns:
        The PNG file's bytes.
    """
    _validate_bench(bench)
    # Figure + the Agg canvas directly, not pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    results = list(bench["results"]) if bench else []
    if not results:
        fig = Figure(figsize=(7, 2.5), dpi=110)
        FigureCanvasAgg(fig)
        text = "No benchmark results" + (f"\n{note}" if note else "")
        fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()

    sizes = sorted({(r["height"], r["width"]) for r in results})
    labels = list(dict.fromkeys(backend_label(r) for r in results))
    # One colour and marker per backend across all panels, so a backend is recognisable in every column.
    colours = [f"C{i % 10}" for i in range(len(labels))]
    markers = "osD^vP*X<>"
    fig = Figure(figsize=(max(6.5, 5.0 * len(sizes)), 7.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(sizes), squeeze=False)
    for col, (height, width) in enumerate(sizes):
        rows_here = [r for r in results if (r["height"], r["width"]) == (height, width)]
        batches = sorted({r["batch"] for r in rows_here})
        for row, (key, title, ylabel) in enumerate(
            [
                ("p50_ms", f"p50 latency, {height}x{width}", "ms per batch (lower is better)"),
                ("images_per_s", f"throughput, {height}x{width}", "images/s (higher is better)"),
            ]
        ):
            ax = axes[row][col]
            values = []
            for i, label in enumerate(labels):
                points = sorted((r["batch"], r[key]) for r in rows_here if backend_label(r) == label)
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                values += ys
                ax.plot(xs, ys, marker=markers[i % len(markers)], color=colours[i], label=label)
            # Backends differ by orders of magnitude (CPU eager vs a GPU engine): a log axis keeps all readable.
            if values and max(values) / min(values) > 20:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)  # a linear axis cut above zero would exaggerate small differences
            if len(batches) > 1 and batches[-1] / batches[0] >= 4:
                ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(batches))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([str(b) for b in batches])
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("batch")
            ax.set_ylabel(ylabel, fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    handles, legend_labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in legend_labels:
                handles.append(handle)
                legend_labels.append(label)
    fig.legend(handles, legend_labels, loc="outside lower center", ncols=min(3, len(legend_labels)), fontsize=9)
    fig.suptitle("mopt bench: p50 latency and throughput per backend")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- writing


def write_report(
    report_dir: Path,
    *,
    compare: dict | None,
    bench: dict | None,
    stages: list[dict],
    machine: dict,
) -> Path:
    """Write ``summary.md`` and ``latency.png`` into ``report_dir``.

    Both files are rendered in memory first and each is written atomically, so invalid input writes nothing
    and an interrupted run never leaves a half-written file.

    Args:
        report_dir: the report folder (created if missing).
        compare: the compare JSON dict, or None when compare did not run.
        bench: the bench JSON dict, or None when bench did not run.
        stages: one record per pipeline stage: ``name``, ``status`` (ok/skipped/failed), ``detail`` (the skip or
            failure reason), ``seconds`` and ``artifact`` (both may be None).
        machine: where the pipeline ran (free-form key/value pairs).

    Returns:
        The path of ``summary.md``.

    Raises:
        MoptError: an input does not follow its schema (nothing is written).
    """
    summary = {
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "stages": stages,
        "compare": compare,
        "bench": bench,
        "chart": True,
    }
    markdown = markdown_report(summary)
    png = latency_chart_png(bench, note=_skip_reason(stages, "bench"))
    report_dir = Path(report_dir)
    # The chart goes first: a summary.md on disk then always has its image beside it.
    with atomic_output(report_dir / CHART_NAME) as tmp:
        tmp.write_bytes(png)
    return write_text(report_dir / SUMMARY_NAME, markdown)


def combined_summary(report_dir: str | Path, sections: Sequence[str]) -> Path:
    """``report_dir/summary.md`` with one section per model, each the summary of its own report folder.

    ``make compare`` runs the pipeline once per bundled model into ``report_dir/<name>/``; this index puts
    their summaries under one heading each (their own headings one level down) so one file tells the verdicts.
    """
    report_dir = Path(report_dir)
    lines = ["# mopt compare: the bundled models", ""]
    for name in sections:
        summary = report_dir / name / SUMMARY_NAME
        lines += [f"## {name}", "", f"Report folder: `{name}/`.", ""]
        if not summary.is_file():
            lines += ["No summary was written (the pipeline stopped early); see the command's output.", ""]
            continue
        for line in summary.read_text().splitlines():
            lines.append("#" + line if line.startswith("#") else line)
        lines.append("")
    from optimize.fileio import write_text

    return write_text(report_dir / SUMMARY_NAME, "\n".join(lines))
