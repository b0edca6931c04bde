"""CV-UNet: a MobileNetV3 encoder with a depthwise-separable U-Net decoder that predicts an alpha matte.

Each decoder stage upsamples to the skip's exact size, concatenates the skip and runs one
:class:`DepthwiseSeparableDecoderBlock`. With ``output_stride=1`` (the default) the last stage concatenates
the input image itself, which gives the head full-resolution colour edges to place hair and soft boundaries.
With ``output_stride=2`` the decoder stops at the stride-2 skip and the alpha logits are upsampled
bilinearly: about half the CPU latency at 512x512, for softer edges (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from architectures.blocks import DepthwiseSeparableDecoderBlock, upsample_to
from architectures.mobilenetv3 import MobileNetV3Encoder
from architectures.registry import register_model


@dataclass(frozen=True)
class CVUNetConfig:
    """Everything needed to rebuild a CV-UNet; stored in checkpoints as plain JSON."""

    encoder: str = "large"
    width_mult: float = 1.0
    decoder_channels: tuple[int, ...] = (96, 64, 32, 24, 16)
    se_reduction: int = 8
    in_channels: int = 3
    output_stride: int = 1  # 1: last stage at full resolution on the image; 2: stop at stride 2, upsample


class CVUNet(nn.Module):
    """Lightweight U-Net matting model: ``N,3,H,W`` image -> ``N,1,H,W`` alpha in [0, 1], for any H and W."""

    def __init__(self, config: CVUNetConfig) -> None:
        super().__init__()
        if config.output_stride not in (1, 2):
            raise ValueError(f"output_stride must be 1 or 2, got {config.output_stride}")
        self.output_stride = config.output_stride
        self.encoder = MobileNetV3Encoder(config.encoder, config.width_mult, config.in_channels)
        # Skips from deep to shallow (strides 16, 8, 4, 2), then the input image at stride 1.
        skip_channels = list(reversed(self.encoder.out_channels[:-1]))
        if self.output_stride == 1:
            skip_channels.append(config.in_channels)
        if len(config.decoder_channels) != len(skip_channels):
            raise ValueError(
                f"decoder_channels needs {len(skip_channels)} entries for output_stride {config.output_stride}, "
                f"got {config.decoder_channels}"
            )
        blocks = []
        in_ch = self.encoder.out_channels[-1]
        for skip_ch, out_ch in zip(skip_channels, config.decoder_channels):
            blocks.append(DepthwiseSeparableDecoderBlock(in_ch + skip_ch, out_ch, config.se_reduction))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, 1, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.encoder(image)  # strides 2..32
        skips = list(reversed(features[:-1]))
        if self.output_stride == 1:
            skips.append(image)
        x = features[-1]  # N,C5,H/32,W/32
        for block, skip in zip(self.decoder, skips):
            x = block(torch.cat([upsample_to(x, skip), skip], dim=1))  # N,C,Hs,Ws
        logits = self.head(x)  # N,1,H/s,W/s
        if self.output_stride != 1:
            logits = upsample_to(logits, image)  # N,1,H,W: exact size, odd H/W included
        return torch.sigmoid(logits)


@register_model("cvunet-mbv3-large", CVUNetConfig(), "CV-UNet, MobileNetV3-Large encoder (default)")
def cvunet_mbv3_large(config: CVUNetConfig) -> nn.Module:
    return CVUNet(config)


@register_model(
    "cvunet-mbv3-large-s2",
    CVUNetConfig(decoder_channels=(96, 64, 32, 24), output_stride=2),
    "CV-UNet, MobileNetV3-Large encoder, decoder ending at stride 2 (faster, softer edges)",
)
def cvunet_mbv3_large_s2(config: CVUNetConfig) -> nn.Module:
    return CVUNet(config)


@register_model(
    "cvunet-mbv3-small",
    CVUNetConfig(encoder="small", decoder_channels=(64, 48, 24, 16, 16)),
    "CV-UNet, MobileNetV3-Small encoder",
)
def cvunet_mbv3_small(config: CVUNetConfig) -> nn.Module:
    return CVUNet(config)


@register_model(
    "cvunet-tiny",
    CVUNetConfig(encoder="small", width_mult=0.35, decoder_channels=(16, 16, 8, 8, 8)),
    "CV-UNet at width 0.35 with a narrow decoder, for fast tests",
)
def cvunet_tiny(config: CVUNetConfig) -> nn.Module:
    return CVUNet(config)
