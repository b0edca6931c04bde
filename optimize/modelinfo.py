"""Model size and cost: parameters, GFLOPs at a given input size, encoder channels per stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class ModelInfo:
    arch: str
    parameters: int
    size_mb_fp32: float
    height: int
    width: int
    gflops: float
    encoder_channels: list[int] = field(default_factory=list)
    encoder_strides: list[int] = field(default_factory=list)


def info_from_model(model: nn.Module, height: int = 512, width: int = 512) -> ModelInfo:
    """Count parameters and the floating-point operations of one forward pass at ``height x width``.

    GFLOPs counts a multiply-add as two operations (PyTorch's FlopCounterMode convention), grouped and
    depthwise convolutions included at their true cost.
    """
    params = sum(p.numel() for p in model.parameters())
    model = model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width))
    encoder = getattr(model, "encoder", None)
    return ModelInfo(
        arch=getattr(model, "arch_name", type(model).__name__),
        parameters=params,
        size_mb_fp32=params * 4 / 2**20,
        height=height,
        width=width,
        gflops=counter.get_total_flops() / 1e9,
        encoder_channels=list(getattr(encoder, "out_channels", [])),
        encoder_strides=list(getattr(encoder, "strides", [])),
    )
