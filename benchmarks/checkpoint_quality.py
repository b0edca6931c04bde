"""Matte quality of checkpoints on the built-in synthetic validation composites, at several input sizes.

    .venv/bin/python benchmarks/checkpoint_quality.py checkpoints/cvunet.pth --sizes 192:256,320:64,512:32

``SIZE:COUNT`` pairs: ``COUNT`` validation composites (seed 0, the set `mopt train` validates on) rendered at
SIZE x SIZE. Prints IoU of alpha > 0.5, MAD and the gradient error (Grad) per checkpoint and size, in PyTorch
FP32: the quality of the weights themselves, before any export.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from optimize.checkpoint import load_checkpoint
from optimize.metrics import gradient_error
from optimize.synthetic import validation_set
from optimize.train import predict_alpha, scores_of_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--sizes", default="192:256,320:64,512:32", help="SIZE:COUNT pairs, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in pair.split(":")) for pair in args.sizes.split(",")]
    print("| checkpoint | size | composites | IoU@0.5 | MAD | Grad |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in args.checkpoints:
        loaded = load_checkpoint(path)
        for size, count in sizes:
            samples = validation_set(count, size, size)
            preds = predict_alpha(loaded.model, [rgb for rgb, _ in samples], loaded.normalization)
            trues = [alpha for _, alpha in samples]
            scores = scores_of_predictions(preds, trues)
            grad = float(np.mean(gradient_error(np.stack(preds), np.stack(trues))))
            print(
                f"| {path} ({loaded.arch}) | {size}×{size} | {count} | {scores['iou']:.3f} | "
                f"{scores['mad'] * 1e3:.1f}e-3 | {grad:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
