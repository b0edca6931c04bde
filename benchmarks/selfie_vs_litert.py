"""MediaPipe selfie segmentation: mopt's PyTorch port and its ONNX Runtime builds against the original in LiteRT.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/selfie_vs_litert.py --sizes 256x256,512x512 --batches 1,8 --threads 2

The converted checkpoint is exported, simplified, converted to FP16 and quantized to INT8 (calibrated on the
bundled real photos) with the precision recipes beside it, through the same library functions as the
``mopt`` commands. Each is timed in ONNX Runtime, and the FP32 and INT8 files in OpenVINO (FP32 also computed
in bf16 where the CPU has it), each OpenVINO run under its latency and its throughput hint, through mopt's
own backend classes; against PyTorch eager (FP32, the reference) and the original ``.tflite`` in LiteRT with
XNNPACK. LiteRT's graph is frozen at 1 x 256 x 256 x 3: for other batches it gets
``resize_tensor_input``, and for other sizes also :func:`optimize.tflite_import.tflite_for_size` (its resize
targets and pool windows re-set for that size, nothing else changed), so every row runs the same network
and weights. LiteRT reads NHWC and the others NCHW: each gets its own layout prepared ahead, untimed.

Latency is timed in interleaved rounds (every runtime once per round) so that load from other processes hits
all of them alike; the ratios are the numbers to read. Quality: the mattes of every runtime against PyTorch
FP32 on the bundled real photos at each size (``optimize.metrics.matte_metrics``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from optimize.backends import OnnxRuntimeBackend, OpenVinoBackend, TorchBackend
from optimize.backends.openvino import inference_precision_reason, openvino_unavailable_reason
from optimize.bench import machine_info
from optimize.checkpoint import load_checkpoint
from optimize.export import onnx_from_checkpoint
from optimize.images import load_rgb, resize_rgb
from optimize.metrics import matte_metrics
from optimize.precision import fp16_conversion_from_onnx, fp16_emulation_from_model, run_onnx
from optimize.quantize import int8_quantization_from_onnx
from optimize.sample_photos import sample_photo_folder, sample_photo_paths
from optimize.shapes import parse_ints, parse_size
from optimize.simplify import simplified_onnx_from_onnx
from optimize.tflite_import import bundled_tflite, tflite_for_size


class LiteRTRunner:
    """The original .tflite in LiteRT (XNNPACK delegate), at one batch and size, on NHWC float32 input."""

    def __init__(self, tflite_path: Path, batch: int, height: int, width: int, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=tflite_for_size(tflite_path, height, width), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.resize_tensor_input(self.input, [batch, height, width, 3])
        self.interpreter.allocate_tensors()
        self.height, self.width = height, width

    def infer(self, nhwc: np.ndarray) -> np.ndarray:
        """N x H x W x 3 -> N x 1 x H x W, cropped to the input size (XNNPACK rounds odd sizes up)."""
        self.interpreter.set_tensor(self.input, nhwc)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output)[:, : self.height, : self.width, 0]
        return out[:, None]

    def time_inference(self, nhwc: np.ndarray, iterations: int) -> list[float]:
        return timed(lambda: self.infer(nhwc), iterations, time.perf_counter)


def timed(call: Callable[[], object], iterations: int, clock: Callable[[], float]) -> list[float]:
    """Milliseconds of ``clock`` per ``call``: wall time (``perf_counter``) or this process's CPU time."""
    times = []
    for _ in range(iterations):
        start = clock()
        call()
        times.append((clock() - start) * 1e3)
    return times


def photo_batch(height: int, width: int, count: int) -> np.ndarray:
    """``count`` real photos at ``height x width`` (cycled), NCHW float32 in [0, 1]: the model's input."""
    paths = sample_photo_paths()
    rgb = [resize_rgb(load_rgb(paths[i % len(paths)]), height, width) for i in range(count)]
    return np.stack(rgb).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/selfie.pth"))
    parser.add_argument("--tflite", type=Path, default=None, help="original .tflite [third_party/mediapipe/...]")
    parser.add_argument("--sizes", default="256x256,512x512")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fp16-recipe", type=Path, default=Path("checkpoints/selfie.fp16-recipe.json"))
    parser.add_argument("--int8-recipe", type=Path, default=Path("checkpoints/selfie.int8-recipe.json"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=4, help="timed calls per runtime per round")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: latency; cpu: the process's CPU seconds per call, which other load on the machine barely "
        "changes (with --threads 1 it is the work one call takes) [wall]",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the models here [a temporary folder]")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    batches = parse_ints(args.batches, "batches")
    tflite = args.tflite or bundled_tflite("mediapipe-selfie")
    machine = machine_info(args.threads)
    load_start = os.getloadavg()
    skipped: list[dict] = []
    print(json.dumps(machine))

    with tempfile.TemporaryDirectory(prefix="mopt-selfie-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        photos = sample_photo_folder(work / "photos")
        count = len(sample_photo_paths())
        fp32 = simplified_onnx_from_onnx(onnx_from_checkpoint(args.checkpoint, work / "selfie.onnx").path).path
        recipes = {k: r if r.is_file() else None for k, r in (("fp16", args.fp16_recipe), ("int8", args.int8_recipe))}
        # Measured, not gated here: the metrics are printed instead.
        fp16 = fp16_conversion_from_onnx(
            fp32, recipe=recipes["fp16"], images=photos, count=count, max_abs=math.inf, mad=math.inf
        )
        int8 = int8_quantization_from_onnx(
            fp32, calib_dir=photos, recipe=recipes["int8"], images=photos, count=count, mad=math.inf
        )
        fp16_all = fp16_conversion_from_onnx(
            fp32, work / "selfie.sim.fp16-all.onnx", images=photos, count=count, max_abs=math.inf, mad=math.inf
        )
        # ONNX Runtime's CPU provider runs most FP16 nodes in FP32 (it inserts casts and drops cast pairs), so its
        # FP16 mattes say little about FP16 hardware; the emulation rounds every FP16 tensor as a GPU would.
        emulated = {
            "fp16 emulated": fp16_emulation_from_model(onnx.load(str(fp16.path))),
            "fp16 no recipe emulated": fp16_emulation_from_model(onnx.load(str(fp16_all.path))),
        }
        onnx_models = {"ort fp32": fp32, "ort fp16": fp16.path, "ort int8": int8.path}
        torch_backend = TorchBackend(load_checkpoint(args.checkpoint).model, threads=args.threads)
        ort = {name: OnnxRuntimeBackend(path, threads=args.threads) for name, path in onnx_models.items()}
        backends = {**ort, **openvino_backends(fp32, int8.path, args.threads, skipped)}
        # Quality once per computation: a throughput run computes what its latency run does.
        judged = {name: b for name, b in backends.items() if not name.endswith(" tput")}

        quality: dict[str, dict[str, dict]] = {}
        latency: dict[str, dict[str, dict]] = {}
        for height, width in sizes:
            size = f"{height}x{width}"
            x = photo_batch(height, width, count)
            reference = torch_backend.infer(x)
            lite_one = LiteRTRunner(tflite, 1, height, width, args.threads)
            outputs = {name: b.infer(x) for name, b in judged.items()}
            outputs.update({name: run_onnx(model, x, threads=args.threads) for name, model in emulated.items()})
            outputs["litert"] = np.concatenate(
                [lite_one.infer(x[i : i + 1].transpose(0, 2, 3, 1)) for i in range(count)]
            )
            quality[size] = {
                name: matte_metrics(np.clip(out, 0, 1), np.clip(reference, 0, 1)).to_dict()
                for name, out in outputs.items()
            }
            for batch in batches:
                xb = photo_batch(height, width, batch)
                nhwc = np.ascontiguousarray(xb.transpose(0, 2, 3, 1))
                lite = LiteRTRunner(tflite, batch, height, width, args.threads)
                runners = {"torch": torch_backend, **backends}
                for runner in runners.values():
                    # One warm-up call; time_inference also gives OpenVINO its static compilation for the shape.
                    runner.time_inference(xb, 1, 0)
                lite.infer(nhwc)
                clock = time.perf_counter if args.clock == "wall" else time.process_time
                calls = {name: (lambda r=runner, x=xb: r.infer(x)) for name, runner in runners.items()}
                calls["litert"] = lambda r=lite, x=nhwc: r.infer(x)
                times: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, call in calls.items():
                        times[name] += timed(call, args.iterations, clock)
                latency[f"{size} b{batch}"] = {
                    name: {"p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "n": len(t)}
                    for name, t in times.items()
                }
                print(
                    f"{size} batch {batch}: "
                    + ", ".join(f"{n} {v['p50_ms']:.1f} ms" for n, v in latency[f"{size} b{batch}"].items())
                )
        for backend in backends.values():
            backend.close()
    load_end = os.getloadavg()

    names = ["torch", *backends, "litert"]
    print(
        f"\nPyTorch eager FP32, ONNX Runtime {_version('onnxruntime-gpu', 'onnxruntime')} CPU (simplified ONNX; FP16 "
        f"keeping {len(fp16.kept_fp32)} nodes in FP32, of which ONNX Runtime runs {fp16.ort_fp16_nodes[0]} of "
        f"{fp16.ort_fp16_nodes[1]} FP16 nodes in FP16; INT8 with {len(int8.quantized)} nodes quantized, calibrated "
        f"on {count} photos), OpenVINO {_version('openvino')} (lat: latency hint, tput: throughput hint) and "
        f"LiteRT {_version('ai-edge-litert')} XNNPACK; {args.threads} threads, p50 of {args.rounds * args.iterations} "
        f"calls ({'wall' if args.clock == 'wall' else 'process CPU'} ms); load average {load_start[0]:.1f} at the "
        f"start, {load_end[0]:.1f} at the end"
    )
    for item in skipped:
        print(f"skipped {item['backend']}: {item['reason']}")
    print("\n| runtime | " + " | ".join(f"{k.replace(' b', ' batch ')} ms (/ litert)" for k in latency) + " |")
    print("|---|" + "---:|" * len(latency))
    for name in names:
        cells = [
            f"{row[name]['p50_ms']:.1f} ({row[name]['p50_ms'] / row['litert']['p50_ms']:.2f}x)"
            for row in latency.values()
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nMattes against PyTorch FP32 on the {count} bundled real photos\n")
    print("| size | runtime | MAD | max abs | MSE | SAD | Grad | Conn | IoU@0.5 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, rows in quality.items():
        for name, m in rows.items():
            print(
                f"| {size} | {name} | {m['mad']:.2e} | {m['max_abs']:.2e} | {m['mse']:.2e} | {m['sad']:.3f} | "
                f"{m['grad']:.4f} | {m['conn']:.3f} | {m['iou']:.4f} |"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "load_average": {"start": list(load_start), "end": list(load_end)},
                    "settings": {k: str(v) for k, v in vars(args).items()},
                    "fp16_kept_fp32": len(fp16.kept_fp32),
                    "fp16_ort_fp16_nodes": list(fp16.ort_fp16_nodes),
                    "int8_quantized": len(int8.quantized),
                    "skipped": skipped,
                    "quality": quality,
                    "latency": latency,
                },
                indent=2,
            )
        )


def openvino_backends(fp32: Path, int8: Path, threads: int, skipped: list[dict]) -> dict[str, OpenVinoBackend]:
    """OpenVINO on the FP32 file (in f32, and in bf16 where the CPU has it) and the INT8 Q/DQ file, each under
    the latency and the throughput hint; what cannot run here is added to ``skipped`` with the reason."""
    reason = openvino_unavailable_reason()
    if reason:
        skipped.append({"backend": "openvino", "reason": reason})
        return {}
    runs = {"ov fp32": (fp32, "fp32"), "ov bf16": (fp32, "bf16"), "ov int8": (int8, "fp32")}
    backends: dict[str, OpenVinoBackend] = {}
    for name, (path, precision) in runs.items():
        reason = inference_precision_reason(precision)
        if reason:
            skipped.append({"backend": name, "reason": reason})
            continue
        for hint, suffix in (("LATENCY", "lat"), ("THROUGHPUT", "tput")):
            backends[f"{name} {suffix}"] = OpenVinoBackend(
                path, threads=threads, inference_precision=precision, performance_hint=hint
            )
    return backends


def _version(*distributions: str) -> str:
    """The installed version of the first of ``distributions`` that is installed."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in distributions:
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "?"


if __name__ == "__main__":
    main()
