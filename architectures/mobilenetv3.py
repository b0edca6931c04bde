"""MobileNetV3 feature encoder (Howard et al., 2019), written here because torchvision is not installable.

The encoder returns one feature map per stride (2, 4, 8, 16, 32) and exposes ``out_channels`` so that a
decoder can be built from it, as segmentation_models_pytorch does.
"""

from __future__ import annotations

import torch
from torch import nn

from architectures.blocks import ConvBNAct, InvertedResidual, make_divisible

# kernel, expansion, out, squeeze-excite, hard-swish, stride — Tables 1 and 2 of the paper.
LARGE_BLOCKS = [
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
]
SMALL_BLOCKS = [
    (3, 16, 16, True, False, 2),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
]
LAST_CONV = {"large": 960, "small": 576}
VARIANTS = {"large": LARGE_BLOCKS, "small": SMALL_BLOCKS}


class MobileNetV3Encoder(nn.Module):
    """MobileNetV3 without its classifier, cut into five stages of strides 2, 4, 8, 16 and 32.

    Args:
        variant: ``"large"`` or ``"small"``.
        width_mult: channel multiplier applied to every layer (rounded to multiples of 8).
        in_channels: channels of the input image.
    """

    def __init__(self, variant: str = "large", width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"MobileNetV3 variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        stem_ch = make_divisible(16 * width_mult)
        stages: list[list[nn.Module]] = [[ConvBNAct(in_channels, stem_ch, 3, 2, act=nn.Hardswish)]]
        stage_channels = []
        in_ch = stem_ch
        for kernel, exp, out, use_se, use_hs, stride in VARIANTS[variant]:
            if stride == 2:  # the resolution halves: what came before is a finished stage
                stage_channels.append(in_ch)
                stages.append([])
            exp_ch, out_ch = make_divisible(exp * width_mult), make_divisible(out * width_mult)
            act = nn.Hardswish if use_hs else nn.ReLU
            stages[-1].append(InvertedResidual(in_ch, exp_ch, out_ch, kernel, stride, use_se, act))
            in_ch = out_ch
        last_ch = make_divisible(LAST_CONV[variant] * width_mult)
        stages[-1].append(ConvBNAct(in_ch, last_ch, 1, act=nn.Hardswish))
        stage_channels.append(last_ch)
        self.stages = nn.ModuleList(nn.Sequential(*s) for s in stages)
        self.out_channels: list[int] = stage_channels
        self.strides: list[int] = [2 ** (i + 1) for i in range(len(stage_channels))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features  # strides 2, 4, 8, 16, 32
