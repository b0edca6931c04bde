"""The standard U-Net (Ronneberger et al., 2015) that CV-UNet replaces, kept to measure the saving.

Two dense 3x3 conv-BN-ReLU per level, 64 -> 1024 channels, transposed-conv upsampling; padded convolutions
and upsampling to the skip's size so that any H x W works, like CV-UNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from architectures.blocks import ConvBNAct, upsample_to
from architectures.registry import register_model


@dataclass(frozen=True)
class UNetClassicConfig:
    base_channels: int = 64
    depth: int = 4
    in_channels: int = 3


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(ConvBNAct(in_ch, out_ch, 3), ConvBNAct(out_ch, out_ch, 3))


class UNetClassic(nn.Module):
    """Classic U-Net: ``N,3,H,W`` -> ``N,1,H,W`` alpha in [0, 1]."""

    def __init__(self, config: UNetClassicConfig) -> None:
        super().__init__()
        widths = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([double_conv(config.in_channels, widths[0])])
        self.down.extend(double_conv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.up_conv = nn.ModuleList(double_conv(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        x = image
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, conv in zip(reversed(self.up), reversed(self.up_conv)):
            skip = skips.pop()
            x = conv(torch.cat([upsample_to(up(x), skip), skip], dim=1))  # N,C,Hs,Ws
        return torch.sigmoid(self.head(x))


@register_model("unet-classic", UNetClassicConfig(), "Classic U-Net (31M parameters), the baseline CV-UNet replaces")
def unet_classic(config: UNetClassicConfig) -> nn.Module:
    return UNetClassic(config)
