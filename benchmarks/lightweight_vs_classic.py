"""Lightweight CV-UNet against the classic U-Net it replaces: parameters, GFLOPs and latency, in one run.

    .venv/bin/python benchmarks/lightweight_vs_classic.py --size 512x512 --batch 1 --threads 2

Latency is PyTorch eager FP32 and simplified ONNX Runtime FP32 on the CPU. Weights do not change the
arithmetic, so randomly initialised models are timed (the bundled checkpoint is used for CV-UNet if present).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import architectures
from optimize.backends import OnnxRuntimeBackend, TorchBackend
from optimize.bench import machine_info, measure_backend
from optimize.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from optimize.export import onnx_from_checkpoint
from optimize.modelinfo import info_from_model
from optimize.shapes import parse_size
from optimize.simplify import simplified_onnx_from_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cvunet-mbv3-large,cvunet-mbv3-small,unet-classic")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    height, width = parse_size(args.size)
    print(machine_info(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.archs.split(","):
            if name == "cvunet-mbv3-large" and DEFAULT_CHECKPOINT.exists():
                checkpoint = DEFAULT_CHECKPOINT
            else:
                checkpoint = save_checkpoint(architectures.create_model(name), Path(tmp) / f"{name}.pth")
            loaded = load_checkpoint(checkpoint)
            model = loaded.model
            info = info_from_model(model, height, width)
            onnx = simplified_onnx_from_onnx(onnx_from_checkpoint(loaded, Path(tmp) / f"{name}.onnx").path).path
            timings = {}
            for backend in (TorchBackend(model, threads=args.threads), OnnxRuntimeBackend(onnx, threads=args.threads)):
                with backend:
                    result = measure_backend(backend, args.batch, height, width, args.warmup, args.iterations)
                timings[backend.backend] = result.p50_ms
            rows.append((name, info.parameters / 1e6, info.gflops, timings["torch"], timings["onnxruntime"]))
    print(f"\n| model | params (M) | GFLOPs @ {args.size} | torch p50 ms | ORT p50 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, params, gflops, torch_ms, ort_ms in rows:
        print(f"| {name} | {params:.2f} | {gflops:.1f} | {torch_ms:.0f} | {ort_ms:.0f} |")
    base = rows[-1]
    for name, params, gflops, torch_ms, ort_ms in rows[:-1]:
        print(
            f"{base[0]} / {name}: params {base[1] / params:.1f}x, GFLOPs {base[2] / gflops:.1f}x, "
            f"torch latency {base[3] / torch_ms:.1f}x, ORT latency {base[4] / ort_ms:.1f}x"
        )


if __name__ == "__main__":
    main()
