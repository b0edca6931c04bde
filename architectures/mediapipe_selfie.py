"""MediaPipe selfie segmentation (Apache-2.0, Google), ported from its TFLite graph to PyTorch.

The network is a MobileNetV3-style encoder (strides 2..16, squeeze-excitation with sigmoid gates) and a
three-stage decoder whose skip fusions are gated by global context, ending in a 2x2 stride-2 transposed
convolution and a sigmoid. It takes ``N,3,H,W`` RGB in [0, 1] and returns ``N,1,H,W`` person probability
in [0, 1]. Weights come from the original ``.tflite`` through :func:`optimize.tflite_import.checkpoint_from_tflite`.

What the TFLite graph computes, and how the port matches it:

- CONV_2D / DEPTHWISE_CONV_2D with SAME padding: stride-1 convolutions pad ``(k-1)/2`` on each side; stride-2
  ones pad ``(k-3)/2 + H%2`` on top and ``(k-1)/2`` at the bottom (the extra row goes to the bottom/right for
  even sizes), applied with an explicit ``F.pad`` so the amounts follow the input size; in ONNX that is the
  convolution's own ``auto_pad=SAME_UPPER``, the same rule, so the runtime pads inside the convolution.
- AVERAGE_POOL_2D (portrait graph) and MEAN (landscape graph) both cover the whole feature map: a global mean.
- RESIZE_BILINEAR with ``align_corners=False, half_pixel_centers=True``: ``F.interpolate(..., "bilinear",
  align_corners=False)``, sized to the skip tensor it is added to. The graph resizes and then applies a 1x1
  conv; the port applies the conv first (the two commute), which is the same function with less work.
- MediaPipe's custom ``Convolution2DTransposeBias`` (weights OHWI, no kernel flip, bias added, SAME padding
  with the whole padding removed from the bottom/right): ``ConvTranspose2d`` without padding, cropped from
  the top-left to the input's H x W.

Size rule: any H x W (odd and non-square sizes included; at least 1 x 1). At the native size (256 x 256
portrait, 144 x 256 landscape) the port is the TFLite graph. At any other size it is the same graph with
its size-dependent constants (pool windows, resize sizes) set for that size, which is what the network
computes fully convolutionally; the model was trained at its native size, so far larger or smaller inputs
are valid but not what it was tuned for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from architectures.blocks import upsample_to
from architectures.registry import register_model


@dataclass(frozen=True)
class SelfieConfig:
    """The native input size the graph was frozen at (the network itself runs at any size)."""

    native_height: int = 256
    native_width: int = 256


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TFLite SAME padding for an odd kernel: symmetric for stride 1, extra row/column at the end for stride 2."""
    if kernel == 1:
        return x
    if stride == 1:
        p = (kernel - 1) // 2
        return F.pad(x, [p, p, p, p])
    h, w = x.shape[-2], x.shape[-1]
    # total = (ceil(n/2) - 1) * 2 + k - n = k - 2 + n % 2, of which TFLite puts the smaller half first.
    before, after = (kernel - 3) // 2, (kernel - 1) // 2
    return F.pad(x, [before + w % 2, after, before + h % 2, after])


class _SameUpperConv(torch.autograd.Function):
    """A stride-2 SAME convolution that exports as one ONNX ``Conv`` with ``auto_pad=SAME_UPPER``.

    Traced as ``F.pad`` + ``Conv``, the input-size-dependent padding becomes a ``Shape``/``Mod``/``Pad`` chain
    in front of every stride-2 layer, which ONNX Runtime cannot keep in its blocked (NCHWc) layout: each one
    costs a copy and two layout reorders. ONNX's SAME_UPPER is TFLite's SAME exactly (output ``ceil(n/s)``,
    the odd padding element at the end), so the runtime pads inside the convolution for any input size.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, groups: int):
        return F.conv2d(_same_pad(x, weight.shape[-1], stride), weight, bias, stride, 0, 1, groups)

    @staticmethod
    def symbolic(g, x, weight, bias, stride: int, groups: int):  # noqa: ANN001, ANN205 (TorchScript graph values)
        return g.op("Conv", x, weight, bias, auto_pad_s="SAME_UPPER", strides_i=[stride, stride], group_i=groups)


class SameConv2d(nn.Conv2d):
    """A ``Conv2d`` (optionally depthwise) with TFLite SAME padding and bias; the TFLite weights map 1:1."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, depthwise: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel, stride, padding=0, groups=in_ch if depthwise else 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride = self.kernel_size[0], self.stride[0]
        if stride == 2 and kernel > 1 and torch.onnx.is_in_onnx_export():
            return _SameUpperConv.apply(x, self.weight, self.bias, stride, self.groups)
        if stride == 1 and kernel > 1:
            # Symmetric: the convolution's own padding, which every exporter and runtime fuses.
            return F.conv2d(x, self.weight, self.bias, 1, (kernel - 1) // 2, 1, self.groups)
        return super().forward(_same_pad(x, kernel, stride))


class SigmoidSqueezeExcite(nn.Module):
    """Global mean -> 1x1 reduce -> ReLU -> 1x1 expand -> sigmoid gate (MobileNetV3 SE with a sigmoid)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = SameConv2d(channels, squeeze)
        self.expand = SameConv2d(squeeze, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # N,C,1,1: the graph's full-window average pool
        return torch.sigmoid(self.expand(F.relu(self.reduce(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class Bottleneck(nn.Module):
    """1x1 expand -> act -> depthwise kxk -> act -> optional SE -> 1x1 linear project (+ identity)."""

    def __init__(self, in_ch: int, exp_ch: int, out_ch: int, kernel: int, stride: int, se: int, act: str) -> None:
        super().__init__()
        self.expand = SameConv2d(in_ch, exp_ch)
        self.depthwise = SameConv2d(exp_ch, exp_ch, kernel, stride, depthwise=True)
        self.se = SigmoidSqueezeExcite(exp_ch, se) if se else None
        self.project = SameConv2d(exp_ch, out_ch)
        self.act = F.hardswish if act == "hardswish" else F.relu
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.depthwise(self.act(self.expand(x))))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class GatedFusion(nn.Module):
    """One decoder stage: upsample, 1x1 to the skip's width, fuse with a globally gated skip, refine.

    ``u = resize(conv(x)); g = SE-gate(skip + u); y = skip * g + u; r = relu(conv(y)); out = r + relu(dw(r))``.
    """

    def __init__(self, in_ch: int, skip_ch: int) -> None:
        super().__init__()
        self.up = SameConv2d(in_ch, skip_ch)
        self.gate = SigmoidSqueezeExcite(skip_ch, skip_ch)
        self.refine = SameConv2d(skip_ch, skip_ch)
        self.depthwise = SameConv2d(skip_ch, skip_ch, 3, depthwise=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # The graph resizes before the 1x1 conv; bilinear weights sum to 1, so the conv (bias included) commutes
        # with the resize, and running it first resizes Cs instead of Cin channels and convolves a quarter of the
        # pixels (128 -> 24 channels in the first stage). Equal up to float32 rounding.
        u = upsample_to(self.up(x), skip)  # N,Cs,Hs,Ws
        y = skip * self.gate.gate(skip + u) + u
        r = F.relu(self.refine(y))
        return r + F.relu(self.depthwise(r))


class SelfieSegmentation(nn.Module):
    """MediaPipe selfie segmentation: ``N,3,H,W`` RGB in [0, 1] -> ``N,1,H,W`` person probability in [0, 1]."""

    def __init__(self, config: SelfieConfig) -> None:
        super().__init__()
        if config.native_height < 1 or config.native_width < 1:
            raise ValueError(f"native size must be positive, got {config.native_height}x{config.native_width}")
        self.stem = SameConv2d(3, 16, 3, 2)
        # (in, expand, out, kernel, stride, SE squeeze, activation) of the graph's eight bottlenecks.
        specs = [
            (16, 16, 16, 3, 2, 8, "relu"),  # stride 4
            (16, 72, 24, 3, 2, 0, "relu"),  # stride 8
            (24, 88, 24, 3, 1, 0, "relu"),
            (24, 96, 32, 5, 2, 24, "hardswish"),  # stride 16
            (32, 128, 32, 5, 1, 32, "hardswish"),
            (32, 128, 32, 5, 1, 32, "hardswish"),
            (32, 96, 32, 5, 1, 24, "hardswish"),
            (32, 96, 32, 5, 1, 24, "hardswish"),
        ]
        self.blocks = nn.ModuleList(Bottleneck(*spec) for spec in specs)
        # LR-ASPP-like head: features gated by a sigmoid of their global mean.
        self.head = SameConv2d(32, 128)
        self.head_gate = SameConv2d(32, 128)
        self.decoder = nn.ModuleList([GatedFusion(128, 24), GatedFusion(24, 16), GatedFusion(16, 16)])
        self.segment = nn.ConvTranspose2d(16, 1, 2, stride=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s2 = F.hardswish(self.stem(image))  # N,16,H/2,W/2
        s4 = self.blocks[0](s2)  # N,16,H/4,W/4
        x = self.blocks[2](self.blocks[1](s4))  # N,24,H/8,W/8
        s8 = x
        for block in self.blocks[3:]:
            x = block(x)  # N,32,H/16,W/16
        x = F.relu(self.head(x)) * torch.sigmoid(self.head_gate(x.mean((2, 3), keepdim=True)))  # N,128,H/16,W/16
        for stage, skip in zip(self.decoder, (s8, s4, s2)):
            x = stage(x, skip)  # N,C,Hs,Ws
        logits = self.segment(x)  # N,1,2*ceil(H/2),2*ceil(W/2)
        # The custom op drops its SAME padding from the bottom/right: a top-left crop to the input size.
        return torch.sigmoid(logits[:, :, : image.shape[-2], : image.shape[-1]])

    def layers_in_graph_order(self) -> list[nn.Conv2d | nn.ConvTranspose2d]:
        """Every weighted layer in the order the TFLite graph runs its CONV_2D / DEPTHWISE_CONV_2D / transposed conv.

        The importer walks the graph's operators in that same order and assigns each one's weights here.
        """
        layers: list[nn.Conv2d | nn.ConvTranspose2d] = [self.stem]
        for block in self.blocks:
            layers += [block.expand, block.depthwise]
            if block.se is not None:
                layers += [block.se.reduce, block.se.expand]
            layers.append(block.project)
        layers += [self.head, self.head_gate]
        for stage in self.decoder:
            layers += [stage.up, stage.gate.reduce, stage.gate.expand, stage.refine, stage.depthwise]
        layers.append(self.segment)
        return layers


@register_model(
    "mediapipe-selfie",
    SelfieConfig(256, 256),
    "MediaPipe selfie segmentation (portrait, native 256x256; Google, Apache-2.0); weights via mopt import",
    # RGB in [0, 1] (no mean/std); any size runs, but the model was trained at 256 px.
    card={"mean": None, "std": None, "preferred_side": 256},
)
def mediapipe_selfie(config: SelfieConfig) -> nn.Module:
    return SelfieSegmentation(config)


@register_model(
    "mediapipe-selfie-landscape",
    SelfieConfig(144, 256),
    "MediaPipe selfie segmentation (landscape, native 144x256; Google, Apache-2.0); weights via mopt import",
    card={"mean": None, "std": None, "preferred_side": 256},
)
def mediapipe_selfie_landscape(config: SelfieConfig) -> nn.Module:
    return SelfieSegmentation(config)
