"""Folder background removal: ``mopt matte`` against ``rembg p`` on the same ONNX model, in one run.

Both tools run the bundled CV-UNet (exported and simplified with onnxsim) in ONNX Runtime on the CPU, with
the same number of threads, at the same inference resolution (rembg's custom-model session always infers
at 320 x 320; ``mopt matte --max-side 320`` infers 1024 x 1024 images at 320 x 320), over the same folder
of JPEGs, and both write RGBA PNGs of the full input size. Runs alternate (mopt, rembg, mopt, rembg, ...)
so that a change in machine load falls on both.

Two rates are reported per run: *steady* images/s, from the output timestamps after the first tenth of
the outputs to the last one (model loading, interpreter start-up and warm-up excluded; rembg's CLI can take
tens of seconds to import on a first run), and *end to end*, from starting the command to its exit.

rembg is not a dependency of mopt; install it into a throwaway virtual environment (it needs no torch)::

    python3 -m venv /tmp/rembg-venv
    /tmp/rembg-venv/bin/pip install "rembg[cli]" onnxruntime

Then, from the repository root::

    .venv/bin/python -m benchmarks.rembg_vs_mopt --count 200 --threads 2 --rounds 2

``--model u2netp`` runs U²-NetP instead (rembg's own small model, ``architectures/u2net.py``): the script
saves a randomly initialised U²-NetP as a bare state dict (``u2netp.pth``; the published weights cannot be
fetched here, and the arithmetic, hence the speed, is that of trained weights), imports it the way a user
would (``mopt import u2netp.pth --arch u2netp -o u2netp.onnx``, through
:func:`optimize.model_import.import_model`) and simplifies it. It then also measures the model itself, in
the same run, as ``mopt bench`` does: PyTorch eager FP32 against ONNX Runtime FP32 on the simplified ONNX,
at 320 x 320, batch 1 and 8, with the same threads (``--latency-batch`` changes the batches, an empty value
skips it).

rembg only loads custom models from inside its home folder, so the script copies the ONNX model into
``<workdir>/rembg-home`` and points ``REMBG_HOME`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from optimize.bench import machine_info
from optimize.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from optimize.export import onnx_from_checkpoint
from optimize.simplify import simplified_onnx_from_onnx
from optimize.synthetic import synthetic_sample

# The `matte` command of mopt, run through its module: the measurement does not depend on where the
# console script was installed or on the other commands being importable.
MOPT_MATTE = [sys.executable, "-c", "from optimize.cli.matte import app; app(prog_name='mopt matte')"]
REMBG_INFERENCE_SIDE = 320  # U2netCustomSession resizes every image to 320 x 320


@dataclass
class Run:
    tool: str
    variant: str
    count: int
    wall_s: float
    cpu_s: float  # user + system time of the command and its children
    steady_images_per_s: float
    output_mib: float
    load: float = field(default_factory=lambda: os.getloadavg()[0])  # 1-minute load average when the run ended

    @property
    def end_to_end_images_per_s(self) -> float:
        return self.count / self.wall_s


def make_jpegs(folder: Path, count: int, side: int, seed: int) -> list[Path]:
    """``count`` synthetic composites as JPEG (quality 92), reused when the folder already holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        if not path.exists():
            rgb, _ = synthetic_sample(i, side, side, seed)
            tmp = path.with_suffix(".tmp")
            Image.fromarray(rgb).save(tmp, format="JPEG", quality=92)
            os.replace(tmp, path)
    return paths


def simplified_model(checkpoint: Path | None, workdir: Path) -> tuple[Path, str]:
    """The checkpoint exported and simplified; a randomly initialised CV-UNet when none is given or bundled."""
    if checkpoint is None and DEFAULT_CHECKPOINT.is_file():
        checkpoint = DEFAULT_CHECKPOINT
    if checkpoint is None:
        import architectures

        checkpoint = save_checkpoint(architectures.create_model("cvunet-mbv3-large"), workdir / "random.pth")
        source = "cvunet-mbv3-large, random weights (the arithmetic, hence the speed, is that of trained weights)"
    else:
        source = str(checkpoint)
    exported = onnx_from_checkpoint(checkpoint, workdir / "model.onnx").path
    return simplified_onnx_from_onnx(exported, workdir / "model.sim.onnx").path, source


def u2netp_model(workdir: Path) -> tuple[Path, Path, str]:
    """A random U²-NetP as bare weights, imported to a mopt checkpoint and ONNX, then simplified.

    Returns the simplified ONNX, the mopt checkpoint (for the PyTorch side of the latency) and a description.
    """
    import torch

    import architectures
    from optimize.model_import import import_model

    weights = workdir / "u2netp.pth"
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save(architectures.create_model("u2netp").state_dict(), weights)  # the shape of the published file
    checkpoint = import_model(weights, workdir / "u2netp.mopt.pth", arch="u2netp").path
    exported = import_model(weights, workdir / "u2netp.onnx", arch="u2netp").path
    simplified = simplified_onnx_from_onnx(exported, workdir / "u2netp.sim.onnx").path
    source = "u2netp, random weights (the arithmetic, hence the speed, is that of trained weights)"
    return simplified, checkpoint, source


def latency(checkpoint: Path, model: Path, threads: int, batches: str, logs: Path) -> list[dict]:
    """``mopt bench`` of the PyTorch checkpoint against ONNX Runtime on ``model`` at 320 x 320; its result rows."""
    report = logs / "bench.json"
    side = REMBG_INFERENCE_SIDE
    command = [
        sys.executable, "-m", "optimize.cli.main", "bench", "-c", str(checkpoint), "--onnx", str(model),
        "--backend", "torch,onnxruntime", "--size", f"{side}x{side}", "--batch", batches,
        "--threads", str(threads), "--json", str(report),
    ]  # fmt: skip
    timed(command, {**os.environ, "OMP_NUM_THREADS": str(threads)}, logs / "bench.log")
    print((logs / "bench.log").read_text(), flush=True)
    return json.loads(report.read_text())["results"]


def print_latency(rows: list[dict]) -> None:
    """The bench rows as a table, with ONNX Runtime's speed-up over PyTorch eager at each batch."""
    print("| backend | batch | p50 ms | p90 ms | images/s |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        cells = [row["backend"], row["batch"], f"{row['p50_ms']:.1f}", f"{row['p90_ms']:.1f}"]
        print("| " + " | ".join(map(str, [*cells, f"{row['images_per_s']:.2f}"])) + " |")
    print()
    for batch in sorted({row["batch"] for row in rows}):
        p50 = {row["backend"]: row["p50_ms"] for row in rows if row["batch"] == batch}
        if "torch" in p50 and "onnxruntime" in p50:
            print(f"batch {batch}: ONNX Runtime {p50['torch'] / p50['onnxruntime']:.2f}x PyTorch eager (p50)")


def output_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.png")) / 2**20


def output_rate(folder: Path, expected: int) -> float:
    """Steady images/s from the outputs' modification times, after the first tenth of them.

    Skipping the first tenth leaves out warm-up and the first batch, whose outputs land together.
    """
    stamps = sorted(p.stat().st_mtime for p in folder.rglob("*.png"))
    if len(stamps) != expected:
        raise SystemExit(f"{folder} holds {len(stamps)} PNGs, expected {expected}: the run failed")
    first = len(stamps) // 10
    return (len(stamps) - 1 - first) / (stamps[-1] - stamps[first])


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``command``; its wall time and CPU time (which, unlike wall time, other load barely changes)."""
    start, cpu = time.perf_counter(), _children_cpu_s()
    with open(log, "w") as out:
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall, cpu = time.perf_counter() - start, _children_cpu_s() - cpu
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])}... exited {result.returncode}; see {log}")
    return wall, cpu


def run_mopt(images: Path, model: Path, out: Path, threads: int, compression: str, logs: Path, count: int) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    report = logs / f"{out.name}.json"
    command = [
        *MOPT_MATTE, str(images), "-o", str(out), "--onnx", str(model), "--max-side", str(REMBG_INFERENCE_SIDE),
        "--threads", str(threads), "--compression", compression, "--report", str(report),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    wall, cpu = timed(command, env, logs / f"{out.name}.log")
    own = json.loads(report.read_text())
    variant = f"--compression {compression}, batch {own['batch']}, workers {own['workers']}"
    return Run("mopt matte", variant, count, wall, cpu, output_rate(out, count), output_mib(out))


def run_rembg(
    rembg: Path, images: Path, model: Path, out: Path, threads: int, home: Path, logs: Path, count: int
) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    extras = json.dumps({"model_path": str(home / model.name)})
    command = [str(rembg), "p", "-m", "u2net_custom", "-x", extras, str(images), str(out)]
    # rembg sets ONNX Runtime's intra- and inter-op threads from OMP_NUM_THREADS.
    env = {**os.environ, "REMBG_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    wall, cpu = timed(command, env, logs / f"{out.name}.log")
    return Run(
        "rembg p", "u2net_custom session, PNG level 6", count, wall, cpu, output_rate(out, count), output_mib(out)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="JPEGs in the folder")
    parser.add_argument("--side", type=int, default=1024, help="JPEG width and height")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for both tools")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each tool")
    parser.add_argument("--model", choices=("cvunet", "u2netp"), default="cvunet", help="the model both tools run")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help=f"cvunet checkpoint, default {DEFAULT_CHECKPOINT}"
    )
    parser.add_argument("--compression", default="fast,default", help="mopt matte PNG settings to run, comma-separated")
    parser.add_argument("--latency-batch", default="1,8", help="u2netp: batches for the PyTorch/ORT latency")
    parser.add_argument("--rembg", type=Path, default=Path("/tmp/rembg-venv/bin/rembg"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mopt-rembg-bench"))
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if not args.rembg.is_file():
        raise SystemExit(f"rembg not found at {args.rembg}; set it up as the module docstring says")
    args.workdir.mkdir(parents=True, exist_ok=True)
    logs = args.workdir / "logs"
    logs.mkdir(exist_ok=True)
    images = args.workdir / f"jpeg-{args.side}"
    print(f"writing {args.count} JPEGs of {args.side}x{args.side} to {images} ...", flush=True)
    make_jpegs(images, args.count, args.side, args.seed)
    if args.model == "u2netp":
        model, checkpoint, source = u2netp_model(args.workdir)
    else:
        model, source = simplified_model(args.checkpoint, args.workdir)
        checkpoint = None
    home = args.workdir / "rembg-home"
    home.mkdir(exist_ok=True)
    shutil.copy2(model, home / model.name)

    machine = machine_info(args.threads)  # records the date too
    start_load = os.getloadavg()[0]
    runs: list[Run] = []
    for round_index in range(args.rounds):
        for compression in args.compression.split(","):
            out = args.workdir / f"mopt-{compression}-{round_index}"
            runs.append(run_mopt(images, model, out, args.threads, compression, logs, args.count))
            print(runs[-1], flush=True)
        out = args.workdir / f"rembg-{round_index}"
        runs.append(run_rembg(args.rembg, images, model, out, args.threads, home, logs, args.count))
        print(runs[-1], flush=True)

    bench_rows = []
    if checkpoint is not None and args.latency_batch:
        bench_rows = latency(checkpoint, model, args.threads, args.latency_batch, logs)

    print()
    print("(medians over the runs; steady: after the first tenth of the outputs; CPU includes start-up)")
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print(f"load average at the start: {start_load:.2f}")
    print(f"model: {source} -> {model.name}; {args.count} JPEGs {args.side}x{args.side}, inferred at 320x320")
    print("command: .venv/bin/python -m benchmarks.rembg_vs_mopt " + " ".join(sys.argv[1:]))
    print()
    print(
        "| tool | settings | steady images/s | end-to-end images/s | CPU s/image (whole command) | output MiB "
        "| load average | runs |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.tool, run.variant), []).append(run)
    medians, end_to_end_medians = {}, {}
    for (tool, variant), members in groups.items():
        steady = statistics.median(r.steady_images_per_s for r in members)
        end_to_end = statistics.median(r.end_to_end_images_per_s for r in members)
        cpu = statistics.median(r.cpu_s / r.count for r in members)
        size = statistics.median(r.output_mib for r in members)
        loads = ", ".join(f"{r.load:.1f}" for r in members)
        medians[(tool, variant)] = steady
        end_to_end_medians[(tool, variant)] = end_to_end
        cells = [tool, variant, f"{steady:.2f}", f"{end_to_end:.2f}", f"{cpu:.3f}", f"{size:.0f}", loads, len(members)]
        print("| " + " | ".join(map(str, cells)) + " |")
    rembg = next(key for key in medians if key[0] == "rembg p")
    print()
    for key, steady in medians.items():
        if key != rembg:
            print(
                f"{key[0]} ({key[1]}) / rembg p: {steady / medians[rembg]:.2f}x steady throughput, "
                f"{end_to_end_medians[key] / end_to_end_medians[rembg]:.2f}x end to end"
            )
    if bench_rows:
        print()
        print(f"latency of the model itself, {REMBG_INFERENCE_SIDE}x{REMBG_INFERENCE_SIDE}, {args.threads} threads:")
        print_latency(bench_rows)


if __name__ == "__main__":
    main()
