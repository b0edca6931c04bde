"""Where ONNX Runtime's speed-up over PyTorch eager comes from: encoder alone, full-resolution and stride-2 decoders.

    .venv/bin/python benchmarks/ort_speedup_breakdown.py --size 512x512 --batch 1,8 --threads 2

For each part, PyTorch eager FP32 and the simplified ONNX Runtime FP32 export are timed at each batch, in
alternating rounds (``--rounds``), and the median of the rounds' p50 latencies is reported with their ratio:

- ``encoder``: the MobileNetV3-Large encoder alone (deepest feature map), the bundled checkpoint's weights;
- ``cvunet-mbv3-large``: the bundled checkpoint, whose last decoder stage runs at full resolution;
- ``cvunet-mbv3-large-s2``: the decoder ending at stride 2 with the alpha upsampled (random weights: weights
  do not change the arithmetic).

The encoder's ratio bounds what any decoder can bring: the whole model's ratio is a latency-weighted mix of
the encoder's and the decoder's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import architectures
from optimize.backends import OnnxRuntimeBackend, TorchBackend
from optimize.bench import machine_info, measure_backend
from optimize.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint, save_checkpoint
from optimize.export import export_module, onnx_from_checkpoint
from optimize.shapes import parse_size
from optimize.simplify import simplified_onnx_from_onnx


class DeepestEncoderFeature(torch.nn.Module):
    """A CV-UNet's encoder with a single output (its stride-32 features), so it exports as one ONNX graph."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)[-1]


def parts(folder: Path) -> list[tuple[str, torch.nn.Module, Path]]:
    """(name, PyTorch model, simplified ONNX) for the encoder and both decoder layouts."""
    bundled = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists() else None
    large = bundled or save_checkpoint(architectures.create_model("cvunet-mbv3-large"), folder / "large.pth")
    stride2 = save_checkpoint(architectures.create_model("cvunet-mbv3-large-s2"), folder / "large-s2.pth")
    loaded = {"cvunet-mbv3-large": load_checkpoint(large), "cvunet-mbv3-large-s2": load_checkpoint(stride2)}
    encoder = DeepestEncoderFeature(loaded["cvunet-mbv3-large"].model.encoder).eval()
    export_module(encoder, folder / "encoder.onnx", output_name="features")
    result = [("encoder", encoder, simplified_onnx_from_onnx(folder / "encoder.onnx").path)]
    for name, checkpoint in loaded.items():
        exported = onnx_from_checkpoint(checkpoint, folder / f"{name}.onnx").path
        result.append((name, checkpoint.model, simplified_onnx_from_onnx(exported).path))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    height, width = parse_size(args.size)
    batches = [int(b) for b in args.batch.split(",")]
    print(machine_info(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, onnx_path in parts(Path(tmp)):
            backends = (TorchBackend(model, threads=args.threads), OnnxRuntimeBackend(onnx_path, threads=args.threads))
            for batch in batches:
                p50 = {backend.backend: [] for backend in backends}
                for _ in range(args.rounds):  # alternate the two so that a noisy moment hits both
                    for backend in backends:
                        result = measure_backend(backend, batch, height, width, args.warmup, args.iterations)
                        p50[backend.backend].append(result.p50_ms)
                torch_ms, ort_ms = statistics.median(p50["torch"]), statistics.median(p50["onnxruntime"])
                rows.append((name, batch, torch_ms, ort_ms))
                print(f"{name} batch {batch}: torch {torch_ms:.1f} ms, ORT {ort_ms:.1f} ms", flush=True)
            for backend in backends:
                backend.close()
    print(f"\nat {args.size}, {args.threads} threads:")
    print("| part | batch | PyTorch p50 ms | ONNX Runtime p50 ms | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, batch, torch_ms, ort_ms in rows:
        print(f"| {name} | {batch} | {torch_ms:.1f} | {ort_ms:.1f} | {torch_ms / ort_ms:.2f}× |")


if __name__ == "__main__":
    main()
