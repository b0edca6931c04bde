"""U²-Net (Qin et al., 2020, "U²-Net: Going Deeper with Nested U-Structure for Salient Object Detection").

A U-Net whose every stage is itself a small U-Net, the ReSidual U-block (RSU): an input conv, an encoder of
``height - 1`` conv-BN-ReLU layers with 2x2 ceil-mode max-pooling between them, a dilated bottom layer, a
decoder that upsamples to each skip's size, and a residual connection to the input conv. RSU-4F replaces the
pooling by growing dilations (1, 2, 4, 8) so the two innermost stages keep their resolution. Six side heads
(3x3 convs to one channel, upsampled to the input size) are fused by a 1x1 ``outconv`` into ``d0``.

Parameter names are those of the authors' ``model/u2net.py`` (xuebinqin/U-2-Net: ``stage1..stage6``,
``stage5d..stage1d``, ``rebnconvin``/``rebnconv{i}``/``rebnconv{i}d`` with ``conv_s1``/``bn_s1``,
``side1..side6``, ``outconv``), so the published ``u2net.pth`` (44,009,869 parameters) and ``u2netp.pth``
(1,131,181 parameters) state dicts load with ``load_state_dict(strict=True)``. The registered model returns
only ``sigmoid(d0)``, ``N,1,H,W``; :meth:`U2Net.side_outputs` gives all seven maps (deep supervision).
Upsampling is always to the exact size of the tensor it meets (the authors' ``_upsample_like``, bilinear,
``align_corners=False``), so any H x W works, odd sizes included, and H/W stay dynamic in ONNX.

How the weights are meant to be fed, from the authors' ``u2net_test.py`` and rembg (danielgatis/rembg,
``rembg/sessions/base.py`` ``normalize`` and ``rembg/sessions/u2net.py``/``u2netp.py`` ``predict``):

- the image is converted to RGB and resized to 320x320 (rembg: PIL LANCZOS, aspect ratio not kept; the
  authors train on 288x288 random crops of 320x320 rescales and test at 320x320);
- pixel values are divided by the image's own maximum (``im / max(im.max(), 1e-6)``), not by 255: the
  same as ``/ 255`` for any image that has a 255 value somewhere;
- then ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) per RGB channel, NCHW float32;
- rembg takes the first ONNX output (``d0``, already a sigmoid), channel 0, min-max normalizes it over
  the prediction (``(p - min) / (max - min)``; the authors' ``normPRED`` does the same), clips to [0, 1],
  scales to uint8 and resizes the mask back to the image size (LANCZOS).

This module returns the raw ``sigmoid(d0)``; the min-max stretch is a post-processing step of its user.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from architectures.blocks import upsample_to
from architectures.registry import register_model

ENCODER_HEIGHTS = (7, 6, 5, 4, 0, 0)  # 0: RSU-4F (dilated, no pooling); stage1..stage6
DECODER_HEIGHTS = (0, 4, 5, 6, 7)  # stage5d..stage1d


@dataclass(frozen=True)
class U2NetConfig:
    """Channel widths per stage; the RSU heights are fixed by the U²-Net design. Defaults: full U²-Net."""

    encoder_mid: tuple[int, ...] = (32, 32, 64, 128, 256, 256)  # stage1..stage6
    encoder_out: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    decoder_mid: tuple[int, ...] = (256, 128, 64, 32, 16)  # stage5d..stage1d
    decoder_out: tuple[int, ...] = (512, 256, 128, 64, 64)
    in_channels: int = 3


class REBNConv(nn.Module):
    """3x3 conv (dilated, padded to keep the size) -> BatchNorm -> ReLU, named as in the original."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def pool_half(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool, stride 2, ceil mode: an odd side keeps its last row/column (65 -> 33)."""
    return F.max_pool2d(x, 2, stride=2, ceil_mode=True)


class RSU(nn.Module):
    """ReSidual U-block RSU-``height``: a ``height``-level U-Net inside one stage, plus a residual.

    Encoder ``rebnconv1..rebnconv{height-1}`` with a pool after all but the last, ``rebnconv{height}`` at
    dilation 2 on the smallest map, decoder ``rebnconv{height-1}d..rebnconv1d`` on [upsampled, skip].
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        if height < 3:
            raise ValueError(f"an RSU needs height >= 3, got {height}")
        self.height = height
        self.rebnconvin = REBNConv(in_ch, out_ch)
        self.rebnconv1 = REBNConv(out_ch, mid_ch)
        for i in range(2, height):
            self.add_module(f"rebnconv{i}", REBNConv(mid_ch, mid_ch))
        self.add_module(f"rebnconv{height}", REBNConv(mid_ch, mid_ch, dilation=2))
        for i in range(height - 1, 1, -1):
            self.add_module(f"rebnconv{i}d", REBNConv(2 * mid_ch, mid_ch))
        self.rebnconv1d = REBNConv(2 * mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = [self.rebnconv1(hxin)]  # full size of this stage
        for i in range(2, self.height):
            skips.append(getattr(self, f"rebnconv{i}")(pool_half(skips[-1])))  # halves at each level
        y = getattr(self, f"rebnconv{self.height}")(skips[-1])  # dilated, same size as the last skip
        y = getattr(self, f"rebnconv{self.height - 1}d")(torch.cat([y, skips[-1]], dim=1))
        for i in range(self.height - 2, 0, -1):
            skip = skips[i - 1]
            y = getattr(self, f"rebnconv{i}d")(torch.cat([upsample_to(y, skip), skip], dim=1))  # N,C,Hs,Ws
        return y + hxin


class RSU4F(nn.Module):
    """RSU-4F: RSU-4 with dilations 1, 2, 4, 8 instead of pooling, for stages already at 1/16 and 1/32."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int) -> None:
        super().__init__()
        self.rebnconvin = REBNConv(in_ch, out_ch)
        self.rebnconv1 = REBNConv(out_ch, mid_ch, dilation=1)
        self.rebnconv2 = REBNConv(mid_ch, mid_ch, dilation=2)
        self.rebnconv3 = REBNConv(mid_ch, mid_ch, dilation=4)
        self.rebnconv4 = REBNConv(mid_ch, mid_ch, dilation=8)
        self.rebnconv3d = REBNConv(2 * mid_ch, mid_ch, dilation=4)
        self.rebnconv2d = REBNConv(2 * mid_ch, mid_ch, dilation=2)
        self.rebnconv1d = REBNConv(2 * mid_ch, out_ch, dilation=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat([hx4, hx3], dim=1))
        hx2d = self.rebnconv2d(torch.cat([hx3d, hx2], dim=1))
        return self.rebnconv1d(torch.cat([hx2d, hx1], dim=1)) + hxin


def rsu_stage(height: int, in_ch: int, mid_ch: int, out_ch: int) -> nn.Module:
    """An RSU of ``height``, or RSU-4F for height 0."""
    return RSU4F(in_ch, mid_ch, out_ch) if height == 0 else RSU(height, in_ch, mid_ch, out_ch)


class U2Net(nn.Module):
    """U²-Net: ``N,3,H,W`` image (ImageNet-normalized RGB) -> ``N,1,H,W`` fused saliency ``sigmoid(d0)``."""

    def __init__(self, config: U2NetConfig) -> None:
        super().__init__()
        for field, widths, stages in (
            ("encoder_mid", config.encoder_mid, 6),
            ("encoder_out", config.encoder_out, 6),
            ("decoder_mid", config.decoder_mid, 5),
            ("decoder_out", config.decoder_out, 5),
        ):
            if len(widths) != stages or any(int(w) < 1 for w in widths):
                raise ValueError(f"{field} needs {stages} positive channel counts, got {widths}")
        in_ch = config.in_channels
        for i, (height, mid, out) in enumerate(zip(ENCODER_HEIGHTS, config.encoder_mid, config.encoder_out)):
            self.add_module(f"stage{i + 1}", rsu_stage(height, in_ch, mid, out))
            in_ch = out
        # Decoder stage k (5..1) takes [the stage below it, upsampled; encoder stage k].
        below = config.encoder_out[5]
        for k, height, mid, out in zip(range(5, 0, -1), DECODER_HEIGHTS, config.decoder_mid, config.decoder_out):
            self.add_module(f"stage{k}d", rsu_stage(height, below + config.encoder_out[k - 1], mid, out))
            below = out
        side_in = (*reversed(config.decoder_out), config.encoder_out[5])  # stage1d..stage5d, stage6
        for k, ch in enumerate(side_in, start=1):
            self.add_module(f"side{k}", nn.Conv2d(ch, 1, 3, padding=1))
        self.outconv = nn.Conv2d(6, 1, 1)

    def side_logits(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Logits ``[d0, d1, ..., d6]``, each ``N,1,H,W``: the fused map, then side1..side6 upsampled."""
        encoded = []  # hx1..hx5, each halved from the last
        x = image
        for k in range(1, 6):
            encoded.append(getattr(self, f"stage{k}")(x))
            x = pool_half(encoded[-1])
        hx6 = self.stage6(x)  # N,C6,H/32,W/32 (ceil)
        decoded = [hx6]  # hx6, hx5d, ..., hx1d
        for k in range(5, 0, -1):
            skip = encoded[k - 1]
            decoded.append(getattr(self, f"stage{k}d")(torch.cat([upsample_to(decoded[-1], skip), skip], dim=1)))
        hx1d = decoded[-1]  # N,C,H,W
        # side k reads the decoder output at level k (side6 reads hx6); all are brought to the input size.
        sides = [self.side1(hx1d)]
        for k in range(2, 7):
            sides.append(upsample_to(getattr(self, f"side{k}")(decoded[6 - k]), hx1d))
        d0 = self.outconv(torch.cat(sides, dim=1))  # N,1,H,W
        return [d0, *sides]

    def side_outputs(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``sigmoid`` of ``[d0, d1, ..., d6]``: what the original ``forward`` returns, for deep supervision."""
        return [torch.sigmoid(d) for d in self.side_logits(image)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.side_logits(image)[0])


@register_model("u2net", U2NetConfig(), "U²-Net (RSU stages, 44.0M parameters); loads the published u2net.pth")
def u2net(config: U2NetConfig) -> nn.Module:
    return U2Net(config)


@register_model(
    "u2netp",
    U2NetConfig(
        encoder_mid=(16, 16, 16, 16, 16, 16),
        encoder_out=(64, 64, 64, 64, 64, 64),
        decoder_mid=(16, 16, 16, 16, 16),
        decoder_out=(64, 64, 64, 64, 64),
    ),
    "U²-Net small (1.13M parameters); loads the published u2netp.pth",
)
def u2netp(config: U2NetConfig) -> nn.Module:
    return U2Net(config)
