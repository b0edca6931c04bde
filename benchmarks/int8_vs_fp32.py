"""ONNX Runtime INT8 (Q/DQ) against FP32 on the CPU: latency and the matte quality it costs, in one run.

    .venv/bin/python -m benchmarks.int8_vs_fp32 --checkpoint checkpoints/cvunet.pth --size 512x512 --threads 2

The checkpoint is exported and simplified, calibrated on a folder of synthetic composites written for the
purpose (read back through the same image loading and preprocessing as inference), quantized with
``mopt quantize``'s defaults (and a ``mopt debug precision`` recipe when given) and, when ModelOpt is
installed, converted to FP16 as well. Quality is measured
against the FP32 ONNX and against PyTorch on held-out composites at the benchmark size. Latency is timed in
interleaved rounds (FP32, INT8, FP32, INT8, ...) so that load from other processes hits both models alike;
the ratio is the number to read, the absolute milliseconds belong to this machine and this moment.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from optimize.backends import OnnxRuntimeBackend, TorchBackend
from optimize.bench import machine_info
from optimize.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from optimize.deps import is_available
from optimize.export import onnx_from_checkpoint
from optimize.metrics import matte_metrics
from optimize.precision import FP16_MAD, FP16_MAX_ABS, fp16_conversion_from_onnx, run_onnx, verification_inputs
from optimize.quantize import INT8_MAD, int8_quantization_from_onnx
from optimize.shapes import parse_ints, parse_size
from optimize.simplify import simplified_onnx_from_onnx
from optimize.synthetic import write_synthetic_folder


def interleaved_latency(
    models: dict[str, Path], batch: int, height: int, width: int, threads: int, rounds: int, iterations: int
) -> dict[str, list[float]]:
    """Milliseconds per call for each model, timed round-robin after one warm-up call each."""
    x = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
    backends = {name: OnnxRuntimeBackend(path, threads=threads) for name, path in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for backend in backends.values():
        backend.infer(x)
    for _ in range(rounds):
        for name, backend in backends.items():
            times[name] += backend.time_inference(x, 0, iterations)
    for backend in backends.values():
        backend.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="entropy", choices=["entropy", "minmax", "percentile"])
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--calib-size", default=None, help="calibration H x W [--size]")
    parser.add_argument("--eval-count", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2, help="timed calls per model per round")
    parser.add_argument("--int8-recipe", type=Path, default=None, help="`mopt debug precision --int8` recipe")
    parser.add_argument("--fp16-recipe", type=Path, default=None, help="`mopt debug precision --fp16` recipe")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the models here [a temporary folder]")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    height, width = parse_size(args.size)
    calib_size = parse_size(args.calib_size) if args.calib_size else (height, width)
    machine = machine_info(args.threads)
    print(json.dumps(machine))

    with tempfile.TemporaryDirectory(prefix="mopt-int8-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        fp32 = simplified_onnx_from_onnx(onnx_from_checkpoint(args.checkpoint, work / "model.onnx").path).path
        write_synthetic_folder(work / "calibration", args.calib_count, calib_size, seed=11)
        # Measured, not gated: the budgets are printed beside the numbers instead.
        int8 = int8_quantization_from_onnx(
            fp32,
            calib_dir=work / "calibration" / "images",
            method=args.method,
            calib_size=calib_size,
            recipe=args.int8_recipe,
            size=(height, width),
            count=args.eval_count,
            mad=math.inf,
            threads=args.threads,
        )
        int8_models = {"int8": int8.path}
        quality = {"int8 vs fp32 onnx": (int8.checks[0].metrics(), {"mad": INT8_MAD})}
        if args.int8_recipe is not None:
            plain = int8_quantization_from_onnx(
                fp32,
                work / "model.sim.int8-all.onnx",
                calib_dir=work / "calibration" / "images",
                method=args.method,
                calib_size=calib_size,
                size=(height, width),
                count=args.eval_count,
                mad=math.inf,
                threads=args.threads,
            )
            int8_models["int8 (no recipe)"] = plain.path
            quality["int8 (no recipe) vs fp32 onnx"] = (plain.checks[0].metrics(), {"mad": INT8_MAD})
        fp16 = None
        if is_available("modelopt.onnx.autocast"):
            fp16 = fp16_conversion_from_onnx(
                fp32,
                recipe=args.fp16_recipe,
                size=(height, width),
                count=args.eval_count,
                max_abs=math.inf,
                mad=math.inf,
                threads=args.threads,
            )
            for check in fp16.checks:
                quality[f"fp16 ({check.label}) vs fp32 onnx"] = (
                    check.metrics(),
                    {"mad": FP16_MAD, "max_abs": FP16_MAX_ABS},
                )

        # Against PyTorch as well: what `mopt compare` reports.
        inputs, described = verification_inputs(fp32, None, (height, width), args.eval_count)
        torch_model = TorchBackend(load_checkpoint(args.checkpoint).model, threads=args.threads)
        reference = np.concatenate([torch_model.infer(inputs[i : i + 2]) for i in range(0, len(inputs), 2)])
        for name, path in (("fp32 onnx", fp32), *int8_models.items()):
            m = matte_metrics(np.clip(run_onnx(path, inputs, threads=args.threads), 0, 1), np.clip(reference, 0, 1))
            budget = {"mad": INT8_MAD} if name.startswith("int8") else {}
            quality[f"{name} vs pytorch"] = ({"mad": m.mad, "max_abs": m.max_abs, "mse": m.mse}, budget)

        latency = {}
        for batch in parse_ints(args.batches, "batches"):
            times = interleaved_latency(
                {"fp32": fp32, **int8_models}, batch, height, width, args.threads, args.rounds, args.iterations
            )
            latency[batch] = {
                name: {"p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "n": len(t)}
                for name, t in times.items()
            }

    print(
        f"\nINT8: {len(int8.quantized)} weighted nodes quantized ({len(int8.kept_fp32)} kept in FP32), "
        f"calibration {args.method} on {int8.calibration['count']} composites at {int8.calibration['size']}; "
        f"quality on {described['count']} held-out composites at {described['size']}"
    )
    print("\n| model | compared with | MAD | max abs | mopt budget |")
    print("|---|---|---:|---:|---|")
    for label, (m, budget) in quality.items():
        model, _, other = label.partition(" vs ")
        verdict = ", ".join(f"{k} <= {v:g}: {'yes' if m[k] <= v else 'NO'}" for k, v in budget.items())
        print(f"| {model} | {other} | {m['mad']:.2e} | {m['max_abs']:.2e} | {verdict} |")
    print(f"\nONNX Runtime CPU, {args.size}, {args.threads} threads, p50 of {args.rounds * args.iterations} calls\n")
    names = list(next(iter(latency.values())))
    print(
        "| batch | "
        + " | ".join(f"{n} ms" for n in names)
        + " | "
        + " | ".join(f"{n} speed-up" for n in names[1:])
        + " |"
    )
    print("|---:|" + "---:|" * (2 * len(names) - 1))
    for batch, row in latency.items():
        cells = [f"{row[n]['p50_ms']:.0f}" for n in names]
        cells += [f"{row['fp32']['p50_ms'] / row[n]['p50_ms']:.2f}x" for n in names[1:]]
        print(f"| {batch} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "settings": {k: str(v) for k, v in vars(args).items()},
                    "int8": {"quantized_nodes": len(int8.quantized), "calibration": int8.calibration},
                    "fp16": {"kept_fp32": fp16.kept_fp32, "ort_fp16_nodes": fp16.ort_fp16_nodes} if fp16 else None,
                    "quality": {k: {"metrics": m, "budget": b} for k, (m, b) in quality.items()},
                    "latency": latency,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
