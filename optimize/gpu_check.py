"""``make gpu-check``: everything mopt can only check on an NVIDIA GPU, in one command, with one report.

On a machine with an NVIDIA GPU (written for an H100/H200; about 3 to 6 minutes there) it:

1. records the machine (GPU, compute capability, driver, CUDA, PyTorch, TensorRT if it imports);
2. runs the ``gpu`` / ``tensorrt``-marked tests (``pytest -m "gpu or tensorrt"``);
3. where TensorRT imports, exports the bundled checkpoint and builds a TensorRT FP16 engine of it;
4. measures what ``mopt bench --size 1024x1024 --batch 1,8`` measures (``optimize.bench.measure_backend``) for
   ``torch-cuda`` (FP32), ``torch-cuda-fp16`` (CUDA graphs) and ``tensorrt`` (FP16, where TensorRT imports),
   with whether each replayed a CUDA graph;
5. runs ``mopt compare`` (Polygraphy) of the GPU backends against the PyTorch FP32 reference on the CPU,
   or says why it was skipped (Polygraphy, SciPy or Pillow missing);
6. computes the memory-bandwidth floor of the model at 1024 x 1024: the bytes a layer-fused engine must move
   (:func:`activation_traffic`) over the device's measured copy rate, beside each measured latency;
7. writes ``gpu-check-<device>.json`` and ``gpu-check-<device>.md`` to the output folder.

On a machine without an NVIDIA GPU it prints one line saying so and exits 2 before importing anything heavy.
It needs only Python, CUDA PyTorch, onnx and onnxruntime (CPU build is fine), numpy, and for the compare step
Polygraphy, SciPy and Pillow; missing wheels can be carried and are installed from ``--wheels`` (see the
Makefile's ``gpu-check`` target).

Exit status: 0 all steps passed or were skipped with a reason, 1 a step failed, 2 no GPU.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import glob
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXIT_NO_GPU = 2
DEFAULT_OUT = Path("reports/gpu-check")
DEFAULT_CHECKPOINT = Path("checkpoints/cvunet.pth")
BENCH_SIZE = (1024, 1024)
BENCH_BATCHES = (1, 8)
BENCH_BACKENDS = ("torch-cuda", "torch-cuda-fp16", "tensorrt")
COMPARE_BACKENDS = ("torch-cuda", "torch-cuda-fp16", "tensorrt")
TEST_TIMEOUT_S = 300
# Module each carried wheel provides (the distribution name differs from the import name for some).
WHEEL_MODULES = {"pillow": "PIL", "polygraphy": "polygraphy", "scipy": "scipy", "onnxsim": "onnxsim"}


# --- is there a GPU? --------------------------------------------------------------------------------------------


def no_gpu_reason() -> str | None:
    """Why this machine cannot run the check (one line), ``None`` when PyTorch sees a CUDA GPU.

    Without an NVIDIA driver (no ``nvidia-smi``, no ``/dev/nvidia*``) it answers without importing PyTorch,
    which alone can take longer than the user should wait for a "no".
    """
    has_driver = shutil.which("nvidia-smi") or glob.glob("/dev/nvidia[0-9]*") or Path("/proc/driver/nvidia").exists()
    if not has_driver:
        return "no NVIDIA GPU or driver on this machine (no nvidia-smi, no /dev/nvidia*): run it on a machine with one"
    import torch

    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU build: install a CUDA build of PyTorch to run the GPU check"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU (driver present, but no usable device): check nvidia-smi"
    return None


# --- the bandwidth floor (pure: runs on the meta device, tested on CPU machines) ----------------------------------


@dataclass(frozen=True)
class Traffic:
    """Bytes one forward pass moves through device memory, at one input shape and dtype.

    Attributes:
        input_bytes: the input tensor (read once).
        output_bytes: the output tensor (written once).
        weight_bytes: the parameters (read once).
        materialized_bytes: outputs a layer-fused engine still writes to memory: those of convolutions (with
            their BatchNorm and pointwise activations folded in), resizes and reductions. Outputs of pointwise
            ops and BatchNorm (fused into their producer), views and in-place ops (no new memory), allocations
            and concatenations (TensorRT writes the concatenated tensors in place) are not counted.
        eager_bytes: every output eager PyTorch writes (all ops but views, in-place ops and allocations).
    """

    input_bytes: int
    output_bytes: int
    weight_bytes: int
    materialized_bytes: int
    eager_bytes: int

    @property
    def floor_bytes(self) -> int:
        """Input + weights read once, each materialized tensor written once and read once, the output not read."""
        return self.input_bytes + self.weight_bytes + 2 * self.materialized_bytes - self.output_bytes

    @property
    def eager_traffic_bytes(self) -> int:
        return self.input_bytes + self.weight_bytes + 2 * self.eager_bytes - self.output_bytes


# Ops whose output a fused engine does not write, beside those torch tags pointwise (hardswish is not tagged).
_FUSED_NON_POINTWISE = ("batch_norm", "empty", "aten::cat", "hardswish", "silu", "gelu", "clamp")


def activation_traffic(model: Any, shape: Sequence[int], dtype: Any = None) -> Traffic:
    """Count the bytes of one forward pass of ``model`` at ``shape`` without computing it (meta tensors).

    Args:
        model: a ``torch.nn.Module`` (copied; the original stays where it is).
        shape: input shape, ``(N, 3, H, W)``.
        dtype: the dtype to count in (``torch.float16`` for FP16 backends); default float32.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    dtype = dtype or torch.float32
    meta_model = copy.deepcopy(model).eval().to(device="meta", dtype=dtype)
    counts = {"materialized": 0, "eager": 0}

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
            out = func(*args, **(kwargs or {}))
            aliasing = any(r.alias_info is not None for r in func._schema.returns)  # views and in-place ops
            name = func._schema.name
            if not aliasing and "empty" not in name:
                size = sum(t.numel() * t.element_size() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
                counts["eager"] += size
                fused = torch.Tag.pointwise in func.tags or any(part in name for part in _FUSED_NON_POINTWISE)
                if not fused:
                    counts["materialized"] += size
            return out

    x = torch.empty(tuple(shape), device="meta", dtype=dtype)
    with torch.no_grad(), _Count():
        y = meta_model(x)
    return Traffic(
        input_bytes=x.numel() * x.element_size(),
        output_bytes=y.numel() * y.element_size(),
        weight_bytes=sum(p.numel() * p.element_size() for p in meta_model.parameters()),
        materialized_bytes=counts["materialized"],
        eager_bytes=counts["eager"],
    )


def floor_ms(traffic_bytes: int, bytes_per_s: float) -> float:
    """The time moving ``traffic_bytes`` takes at ``bytes_per_s`` (read and written bytes both counted)."""
    if bytes_per_s <= 0:
        raise ValueError(f"copy rate must be positive, got {bytes_per_s}")
    return traffic_bytes / bytes_per_s * 1e3


def copy_rate(nbytes: int, seconds: float) -> float:
    """Bytes per second of a device-to-device copy of ``nbytes``: each byte is read once and written once."""
    if seconds <= 0:
        raise ValueError(f"copy time must be positive, got {seconds}")
    return 2 * nbytes / seconds


def measure_copy_rate(device: Any, nbytes: int = 1 << 30, iterations: int = 10) -> float:
    """The device's memory bandwidth as PyTorch sees it: a timed ``copy_`` of ``nbytes`` (GPU only)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iterations):
        dst.copy_(src)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / iterations
    del src, dst
    torch.cuda.empty_cache()
    return copy_rate(nbytes, seconds)


def bandwidth_rows(traffic: dict[tuple[str, int], Traffic], bytes_per_s: float) -> list[dict[str, Any]]:
    """One row per (precision, batch): the bytes and the floor time they take at ``bytes_per_s``."""
    rows = []
    for (precision, batch), t in sorted(traffic.items()):
        rows.append(
            {
                "precision": precision,
                "batch": batch,
                **asdict(t),
                "floor_bytes": t.floor_bytes,
                "eager_traffic_bytes": t.eager_traffic_bytes,
                "floor_ms": floor_ms(t.floor_bytes, bytes_per_s),
                "eager_floor_ms": floor_ms(t.eager_traffic_bytes, bytes_per_s),
            }
        )
    return rows


def attach_floors(results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Add ``floor_ms`` and ``x_floor`` (measured median / floor) to each bench result of a known precision."""
    floors = {(r["precision"], r["batch"]): r["floor_ms"] for r in rows}
    for result in results:
        floor = floors.get((result["precision"], result["batch"]))
        if floor:
            result["floor_ms"] = floor
            result["x_floor"] = result["p50_ms"] / floor


# --- the report -----------------------------------------------------------------------------------------------


def device_slug(name: str | None) -> str:
    """``"NVIDIA H200"`` -> ``"nvidia-h200"`` (for file names)."""
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "unknown-gpu").lower()).strip("-")
    return slug or "unknown-gpu"


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report_markdown(report: dict[str, Any]) -> str:
    """The Markdown version of a gpu-check report."""
    machine = report.get("machine", {})
    lines = [
        f"# mopt gpu-check: {machine.get('gpu_name') or 'unknown GPU'}",
        "",
        f"{report.get('date', '')}; compute capability {machine.get('compute_capability')}, driver "
        f"{machine.get('driver')}, CUDA {machine.get('cuda')}, PyTorch {machine.get('torch')}, TensorRT "
        f"{machine.get('tensorrt') or 'not installed'}; mopt {report.get('mopt_version')}.",
        "",
        "| step | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    for step in report.get("steps", []):
        detail = str(step.get("detail") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']:.1f} | {detail} |")
    bench = report.get("bench") or {}
    if bench.get("results"):
        height, width = BENCH_SIZE
        lines += [
            "",
            f"## Latency at {height}x{width} (median of the timed calls, device-resident I/O)",
            "",
            "| backend | precision | batch | p50 ms | p90 ms | img/s | peak MB | CUDA graph | floor ms | x floor |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for r in bench["results"]:
            graph = {True: "replayed", False: "plain launches"}.get(r.get("cuda_graph"), "-")
            lines.append(
                f"| {r['name']} | {r['precision']} | {r['batch']} | {_fmt(r['p50_ms'])} | {_fmt(r['p90_ms'])} | "
                f"{_fmt(r['images_per_s'], '.1f')} | {_fmt(r.get('peak_mem_mb'), '.0f')} | {graph} | "
                f"{_fmt(r.get('floor_ms'))} | {_fmt(r.get('x_floor'), '.1f')} |"
            )
        for s in bench.get("skipped", []):
            lines.append(f"\nSkipped {s['backend']}: {s['reason']}")
    bandwidth = report.get("bandwidth") or {}
    if bandwidth.get("rows"):
        lines += [
            "",
            f"## Memory-bandwidth floor (device copy rate {bandwidth['copy_gb_per_s']:.0f} GB/s, read + write)",
            "",
            "| precision | batch | materialized MB | weights MB | floor MB moved | floor ms | eager MB moved "
            "| eager ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in bandwidth["rows"]:
            lines.append(
                f"| {r['precision']} | {r['batch']} | {r['materialized_bytes'] / 1e6:.0f} | "
                f"{r['weight_bytes'] / 1e6:.1f} | {r['floor_bytes'] / 1e6:.0f} | {r['floor_ms']:.2f} | "
                f"{r['eager_traffic_bytes'] / 1e6:.0f} | {r['eager_floor_ms']:.2f} |"
            )
    compare = report.get("compare") or {}
    if compare.get("candidates"):
        lines += ["", f"## Compare against {compare.get('reference')}", "", "| candidate | result | max abs | MAD |",
                  "|---|---|---:|---:|"]
        for c in compare["candidates"]:
            verdict = "pass" if c["passed"] else "FAIL: " + "; ".join(c["failures"])
            lines.append(f"| {c['name']} | {verdict} | {c['max_abs']:.2e} | {c['mad']:.2e} |")
    tests = report.get("tests") or {}
    if tests.get("summary"):
        lines += ["", f"Tests (`{tests.get('command')}`): {tests['summary']}"]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``gpu-check-<device>.json`` and ``.md`` into ``out_dir`` (atomically); return their paths."""
    from optimize.fileio import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-check-{device_slug(report.get('machine', {}).get('gpu_name'))}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json(json_path, report)
    write_text(md_path, report_markdown(report))
    return json_path, md_path


# --- carried wheels -------------------------------------------------------------------------------------------


def wheel_module(wheel: Path) -> str:
    """The module a wheel provides: ``pillow-13.0.0-...whl`` -> ``PIL``."""
    distribution = wheel.name.split("-")[0].lower().replace("_", "-")
    return WHEEL_MODULES.get(distribution, distribution.replace("-", "_"))


def missing_wheels(folder: Path) -> list[Path]:
    """Wheels in ``folder`` whose module does not import here (only those are installed: no version clashes)."""
    return [w for w in sorted(folder.glob("*.whl")) if importlib.util.find_spec(wheel_module(w)) is None]


def install_wheels(wheels: Sequence[Path], target: Path) -> None:
    """Install wheels (no index, no dependencies) into ``target`` and put it on ``sys.path`` and ``PYTHONPATH``."""
    if not wheels:
        return
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--target", str(target), *map(str, wheels)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()


# --- the steps ------------------------------------------------------------------------------------------------


@dataclass
class Step:
    name: str
    status: str = "passed"  # passed | failed | skipped
    seconds: float = 0.0
    detail: str | None = None


class Skip(Exception):
    """A step that cannot run here, with the reason (not a failure)."""


@dataclass
class Check:
    """The state the steps share."""

    out: Path
    checkpoint: Path
    workdir: Path
    wheels: Path | None = None
    steps: list[Step] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    engine: Path | None = None
    onnx: Path | None = None

    def run(self, name: str, action: Callable[[], str | None]) -> None:
        """Run one step; its exception is its failure (or skip), never the end of the whole check."""
        step = Step(name)
        start = time.perf_counter()
        print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
        try:
            step.detail = action()
        except Skip as exc:
            step.status, step.detail = "skipped", str(exc)
        except Exception as exc:  # a failed step is reported and the others still run
            step.status = "failed"
            step.detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            self.report.setdefault("tracebacks", {})[name] = traceback.format_exc()
        step.seconds = time.perf_counter() - start
        print(f"gpu-check: {name}: {step.status}{': ' + step.detail if step.detail else ''}", file=sys.stderr)
        self.steps.append(step)


def _machine(check: Check) -> str:
    import torch

    from optimize import __version__
    from optimize.engine import gpu_environment

    machine = gpu_environment()
    check.report["machine"] = {
        **machine.to_dict(), "torch": torch.__version__, "tensorrt_error": machine.tensorrt_error
    }
    check.report["mopt_version"] = __version__
    return f"{machine.gpu_name}, sm_{(machine.compute_capability or '').replace('.', '')}"


def _wheels(check: Check) -> str:
    if check.wheels is None or not check.wheels.is_dir():
        raise Skip("no --wheels folder given")
    wheels = missing_wheels(check.wheels)
    install_wheels(wheels, check.workdir / "site")
    return f"installed {', '.join(w.name for w in wheels)}" if wheels else "every carried module is already here"


def gpu_test_files(tests: Path) -> list[Path]:
    """Test files with ``gpu`` or ``tensorrt`` marks (the others may import modules a GPU machine lacks)."""
    marks = re.compile(r"pytest\.mark\.(gpu|tensorrt)\b")
    return [p for p in sorted(tests.glob("test_*.py")) if marks.search(p.read_text(encoding="utf-8"))]


def _tests(check: Check) -> str:
    root = Path(__file__).resolve().parents[1]
    files = gpu_test_files(root / "tests")
    if not files:
        raise Skip("no test file has gpu or tensorrt marks")
    command = [sys.executable, "-m", "pytest", "-m", "gpu or tensorrt", "-q", "-rs", "-p", "no:cacheprovider",
               *(str(f.relative_to(root)) for f in files)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    check.report["tests"] = {"command": " ".join(command[2:]), "returncode": done.returncode, "summary": summary,
                             "output": done.stdout[-20000:] + done.stderr[-5000:]}
    if done.returncode not in (0, 5):  # 5: every selected test skipped (no TensorRT), which is an answer too
        raise RuntimeError(f"pytest exited {done.returncode}: {summary}")
    return summary


def _engine(check: Check) -> str:
    from optimize.engine import engine_from_onnx, gpu_environment, tensorrt_unavailable_reason
    from optimize.export import onnx_from_checkpoint
    from optimize.profiles import ShapeProfile
    from optimize.tensorrt_api import parse_version

    machine = gpu_environment()
    reason = tensorrt_unavailable_reason(machine)
    if reason:
        raise Skip(f"TensorRT FP16 not measured: {reason}")
    version = machine.tensorrt or ""

    check.onnx = onnx_from_checkpoint(check.checkpoint, check.workdir / "cvunet.onnx").path
    height, width = BENCH_SIZE
    profile = ShapeProfile((1, 3, height, width), (max(BENCH_BATCHES), 3, height, width),
                           (max(BENCH_BATCHES), 3, height, width))
    # The strongly typed FP16 route needs ModelOpt for the FP16 graph; TensorRT 10.x can do without it.
    route = "graph"
    if importlib.util.find_spec("modelopt") is None:
        if parse_version(version)[0] >= 11:
            raise Skip("TensorRT 11 builds FP16 from an FP16 graph, which needs ModelOpt (nvidia-modelopt[onnx])")
        route = "builder-flag"
    built = engine_from_onnx(check.onnx, check.workdir / "cvunet.fp16.plan", precision="fp16", profiles=[profile],
                             route=route)
    check.engine = built.path
    return f"TensorRT {version}, route {built.route.name}, built in {built.sidecar['build_seconds']:.0f} s"


def _bench(check: Check) -> str:
    from optimize.backends import ModelSources, available_backends
    from optimize.bench import machine_info, measure_backend

    sources = ModelSources(checkpoint=check.checkpoint, engine=check.engine)
    names = [n for n in BENCH_BACKENDS if n != "tensorrt" or check.engine is not None]
    skipped: list[dict] = [] if check.engine is not None else [
        {"backend": "tensorrt", "reason": "no engine (see the engine step)"}
    ]
    results = []
    height, width = BENCH_SIZE
    for backend in available_backends(names, sources, skipped):
        with backend:
            for batch in BENCH_BATCHES:
                # measure_backend records whether a CUDA graph was replayed (cuda_graph) and why not (note).
                results.append(asdict(measure_backend(backend, batch, height, width, warmup=5, iterations=30)))
    check.report["bench"] = {"machine": machine_info(), "results": results, "skipped": skipped,
                             "settings": {"warmup": 5, "iterations": 30, "size": list(BENCH_SIZE)}}
    if not results:
        raise RuntimeError("no GPU backend ran: " + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    return f"{len(results)} measurements, {len(skipped)} backends skipped"


def _compare(check: Check) -> str:
    for module, wheel in (("polygraphy", "polygraphy"), ("scipy", "scipy"), ("PIL", "pillow")):
        if importlib.util.find_spec(module) is None:
            raise Skip(f"{module} is not installed here: carry the {wheel} wheel (make gpu-check-wheels)")
    from optimize.backends import ModelSources
    from optimize.checkpoint import load_checkpoint
    from optimize.compare import batched_inputs, candidates_from_sources, compare_models, reference_from_checkpoint

    loaded = load_checkpoint(check.checkpoint)
    sources = ModelSources(checkpoint=check.checkpoint, engine=check.engine)
    candidates, skipped = candidates_from_sources(sources, [n for n in COMPARE_BACKENDS
                                                            if n != "tensorrt" or check.engine is not None])
    if not candidates:
        raise Skip("no GPU backend can run here: " + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    inputs = batched_inputs(loaded.normalization, 512, 512, 2, 4)
    report = compare_models(reference_from_checkpoint(sources), candidates, inputs,
                            input_description={"images": "generated composites", "count": 4, "batch": 2,
                                               "size": "512x512"})
    check.report["compare"] = {**report.to_dict(), "skipped": skipped}
    if not report.passed:
        failed = [c.name for c in report.candidates if not c.passed]
        raise RuntimeError(f"out of tolerance: {', '.join(failed)}")
    return f"{len(report.candidates)} candidates within tolerance"


def _bandwidth(check: Check) -> str:
    import torch

    from optimize.checkpoint import load_checkpoint

    model = load_checkpoint(check.checkpoint).model
    rate = measure_copy_rate(torch.device("cuda", torch.cuda.current_device()))
    height, width = BENCH_SIZE
    traffic = {
        (precision, batch): activation_traffic(model, (batch, 3, height, width), dtype)
        for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16))
        for batch in BENCH_BATCHES
    }
    rows = bandwidth_rows(traffic, rate)
    check.report["bandwidth"] = {"copy_bytes_per_s": rate, "copy_gb_per_s": rate / 1e9, "rows": rows}
    attach_floors((check.report.get("bench") or {}).get("results", []), rows)
    fp16 = next(r for r in rows if r["precision"] == "fp16" and r["batch"] == max(BENCH_BATCHES))
    return f"copy {rate / 1e9:.0f} GB/s; FP16 batch {fp16['batch']} floor {fp16['floor_ms']:.2f} ms"


def run_check(out: Path, checkpoint: Path, wheels: Path | None = None) -> int:
    """Run every step on this GPU machine and write the reports; the exit status (0 passed, 1 a step failed)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mopt-gpu-check-") as workdir:
        check = Check(out=out, checkpoint=checkpoint, workdir=Path(workdir), wheels=wheels)
        check.report["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        check.run("wheels", lambda: _wheels(check))
        check.run("machine", lambda: _machine(check))
        check.run("gpu tests", lambda: _tests(check))
        check.run("tensorrt engine", lambda: _engine(check))
        check.run("bench", lambda: _bench(check))
        check.run("compare", lambda: _compare(check))
        check.run("bandwidth floor", lambda: _bandwidth(check))
        check.report["steps"] = [asdict(s) for s in check.steps]
        json_path, md_path = write_reports(check.report, out)
    print(f"gpu-check: wrote {json_path} and {md_path}", file=sys.stderr)
    return 1 if any(s.status == "failed" for s in check.steps) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optimize.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON and Markdown report")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="model to measure")
    parser.add_argument("--wheels", type=Path, default=None, help="folder of carried wheels to install if missing")
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason:
        print(f"gpu-check: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    return run_check(args.out, args.checkpoint, args.wheels)


if __name__ == "__main__":
    sys.exit(main())
