"""Building blocks shared by the encoders and decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (MobileNet convention)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm -> activation (``None`` for a linear projection)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> reduce -> ReLU -> expand -> gate."""

    def __init__(self, channels: int, squeeze: int, gate: type[nn.Module] = nn.Hardsigmoid) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # N,C,1,1
        s = self.expand(F.relu(self.reduce(s)))
        return x * self.gate(s)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: 1x1 expand -> depthwise kxk -> optional SE -> 1x1 project (+ identity)."""

    def __init__(
        self, in_ch: int, exp_ch: int, out_ch: int, kernel: int, stride: int, use_se: bool, act: type[nn.Module]
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if exp_ch != in_ch:
            layers.append(ConvBNAct(in_ch, exp_ch, 1, act=act))
        layers.append(ConvBNAct(exp_ch, exp_ch, kernel, stride, groups=exp_ch, act=act))
        if use_se:
            layers.append(SqueezeExcite(exp_ch, make_divisible(exp_ch / 4)))
        layers.append(ConvBNAct(exp_ch, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class DepthwiseSeparableDecoderBlock(nn.Module):
    """Decoder block: depthwise 3x3 -> pointwise 1x1 -> squeeze-excitation -> BatchNorm -> ReLU6.

    Far fewer multiply-adds than the two dense 3x3 convolutions of a classic U-Net block; the SE gate lets
    the block re-weight skip channels against upsampled ones.
    """

    def __init__(self, in_ch: int, out_ch: int, se_reduction: int = 8) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.se = SqueezeExcite(out_ch, max(4, out_ch // se_reduction), gate=nn.Sigmoid)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.se(self.pointwise(self.depthwise(x)))))


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling to ``like``'s exact H x W.

    Sizing by the skip tensor rather than by a factor of 2 keeps odd input sizes aligned, and traces to an
    ONNX Resize whose size comes from the skip's Shape, so H and W stay dynamic in the exported graph.
    """
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
