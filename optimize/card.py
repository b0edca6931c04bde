"""The model card: a model's input/output contract, carried by every file mopt writes and read by every stage.

A card says how to turn an image into the model's input (tensor name, channel order, value scale, mean/std,
which sizes the model accepts) and how to read its result (which output when it returns several, whether a
sigmoid must still be applied, how many channels). mopt checkpoints store it beside the weights, every ONNX
mopt writes stores it as ``mopt.card`` metadata, engine sidecars copy it from their ONNX. Files from before
the card derive theirs from what they hold (architecture and normalization), so they keep working.

The card describes the file it is attached to. Exporting applies the output selection and the activation
inside the graph (see :func:`exported_card`), so a mopt ONNX always has one output that is the result.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimize.errors import MoptError

CARD_VERSION = 1
CHANNEL_ORDERS = ("RGB", "BGR")
ACTIVATIONS = ("none", "sigmoid")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_NAME = "input"
DEFAULT_OUTPUT_NAME = "alpha"
IMAGE_OUTPUT_NAME = "image"


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalization: ``x = (rgb / 255 - mean) / std`` on RGB channels."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        try:
            mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MoptError(
                f"checkpoint normalization {data!r} is not {{'mean': [3 floats], 'std': [3 floats]}}"
            ) from exc
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise MoptError(f"checkpoint normalization {data!r} needs 3 means and 3 positive stds")
        return cls(mean, std)  # type: ignore[arg-type]


IMAGENET = Normalization()


@dataclass(frozen=True)
class SizeRule:
    """Which input sizes a model accepts: any H x W, both sides a multiple of N, or one fixed H x W."""

    multiple: int = 1
    fixed: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.multiple < 1:
            raise MoptError(f"size multiple must be at least 1, got {self.multiple}")
        if self.fixed is not None and (len(self.fixed) != 2 or min(self.fixed) < 1):
            raise MoptError(f"fixed size must be two positive sides, got {self.fixed}")

    @property
    def kind(self) -> str:
        return "fixed" if self.fixed else "multiple" if self.multiple > 1 else "any"

    def describe(self) -> str:
        if self.fixed:
            return f"fixed at {self.fixed[0]}x{self.fixed[1]}"
        return f"H and W multiples of {self.multiple}" if self.multiple > 1 else "any H x W"

    def accepts(self, height: int, width: int) -> bool:
        if self.fixed:
            return (height, width) == tuple(self.fixed)
        return height % self.multiple == 0 and width % self.multiple == 0

    def check(self, height: int, width: int, what: str = "size") -> None:
        """Raise a MoptError naming the valid sizes when ``height x width`` is not one of them."""
        if not self.accepts(height, width):
            hint = f"use {self.fixed[0]}x{self.fixed[1]}" if self.fixed else f"use multiples of {self.multiple}"
            raise MoptError(f"{what} {height}x{width} does not fit the model ({self.describe()}): {hint}")

    def nearest(self, height: int, width: int) -> tuple[int, int]:
        """The accepted size closest to ``height x width`` (the fixed size, or each side rounded to the multiple)."""
        if self.fixed:
            return tuple(self.fixed)  # type: ignore[return-value]
        m = self.multiple
        return max(m, round(height / m) * m), max(m, round(width / m) * m)

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """The smallest accepted size that contains ``height x width`` (for models padded, not resized, to fit)."""
        if self.fixed:
            return tuple(self.fixed)  # type: ignore[return-value]
        m = self.multiple
        return -(-height // m) * m, -(-width // m) * m

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": list(self.fixed)} if self.fixed else {"multiple": self.multiple}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SizeRule:
        if "fixed" in data and data["fixed"]:
            h, w = (int(v) for v in data["fixed"])
            return cls(fixed=(h, w))
        return cls(multiple=int(data.get("multiple", 1)))


@dataclass(frozen=True)
class ModelCard:
    """A model's I/O contract.

    Attributes:
        arch: what builds the module: a registered architecture (``cvunet-mbv3-large``, ``u2netp``), an SMP
            architecture (``smp:Unet``), a Python factory (``package.module:callable``), or ``onnx`` for a
            model that exists only as an ONNX file.
        arch_args: keyword arguments of the factory (the config of a registered architecture).
        input_name: the input tensor's name.
        channel_order: ``RGB`` or ``BGR``.
        scale: pixel values are multiplied by it first (``1/255`` maps 8-bit values to [0, 1]).
        mean, std: per-channel normalization after scaling (in the model's channel order), or None.
        size: the input sizes the model accepts.
        batch: a fixed batch size, or None when the batch is dynamic.
        output: which of several outputs is the result: a name or dict key (str) or an index (int); None
            when the model returns one tensor.
        activation: ``sigmoid`` when the output is logits, ``none`` when it is the result already.
        output_channels: 1 for an alpha matte, 3 for an image-to-image model.
        output_name: the name of the result in the ONNX mopt exports.
        preferred_side: the longest side the model was trained at, when it runs at any size but is best near
            that one; ``mopt matte`` and ``mopt serve`` infer at most at it unless ``--max-side`` says otherwise.
    """

    arch: str
    arch_args: dict[str, Any] = field(default_factory=dict)
    input_name: str = DEFAULT_INPUT_NAME
    channel_order: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    size: SizeRule = field(default_factory=SizeRule)
    batch: int | None = None
    output: str | int | None = None
    activation: str = "none"
    output_channels: int = 1
    output_name: str = DEFAULT_OUTPUT_NAME
    preferred_side: int | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise MoptError(f"channel order {self.channel_order!r} is unknown; use RGB or BGR")
        if self.activation not in ACTIVATIONS:
            raise MoptError(f"activation {self.activation!r} is unknown; choose from: {', '.join(ACTIVATIONS)}")
        if (self.mean is None) != (self.std is None):
            raise MoptError("give both mean and std, or neither")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != 3:
                raise MoptError(f"{name} needs 3 values (one per channel), got {len(values)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise MoptError(f"std values must be positive, got {list(self.std)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise MoptError(f"value scale must be a positive number, got {self.scale}")
        if self.output_channels not in (1, 3):
            raise MoptError(f"output channels must be 1 (alpha) or 3 (image), got {self.output_channels}")
        if self.batch is not None and self.batch < 1:
            raise MoptError(f"fixed batch must be at least 1, got {self.batch}")
        if self.preferred_side is not None and self.preferred_side < 1:
            raise MoptError(f"preferred side must be positive, got {self.preferred_side}")

    # --- what the stages ask ---------------------------------------------------------------------------

    @property
    def is_matte(self) -> bool:
        """Whether the model predicts an alpha matte (matte and serve need one)."""
        return self.output_channels == 1

    def require_matte(self, command: str) -> None:
        """Refuse an image-to-image model in a command that writes mattes."""
        if not self.is_matte:
            raise MoptError(
                f"{command} needs a matting model (1 output channel); this model ({self.arch}) returns "
                f"{self.output_channels}-channel images: use export, bench and compare with it instead"
            )

    @property
    def normalization(self) -> Normalization | None:
        """The legacy ``(rgb/255 - mean)/std`` form, when the card is of that form (RGB, scale 1/255)."""
        if self.channel_order != "RGB" or not math.isclose(self.scale, 1 / 255) or self.mean is None:
            return None
        return Normalization(tuple(self.mean), tuple(self.std))  # type: ignore[arg-type]

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """``N x H x W x 3`` uint8 RGB (or one ``H x W x 3``) -> the model's ``N x 3 x H x W`` float32 input."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise MoptError(f"expected N x H x W x 3 RGB images, got shape {x.shape}")
        # Dividing by 255 (not multiplying by 1/255) keeps 8-bit inputs bit-identical to mopt before cards.
        x = x.astype(np.float32) / np.float32(255.0) if math.isclose(self.scale, 1 / 255) else (
            x.astype(np.float32) * np.float32(self.scale)
        )
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        if self.mean is not None:
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def describe(self) -> str:
        """One line for a user: what goes in and what comes out."""
        norm = f"mean {list(self.mean)} std {list(self.std)}" if self.mean is not None else "no mean/std"
        out = "alpha" if self.is_matte else "image"
        select = f", output {self.output!r}" if self.output is not None else ""
        act = ", sigmoid applied" if self.activation == "sigmoid" else ""
        return (
            f"{self.arch}: input {self.input_name!r} {self.channel_order} x{self.scale:.4g} {norm}, "
            f"{self.size.describe()}; {self.output_channels}-channel {out}{select}{act}"
        )

    # --- storage -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_version": CARD_VERSION,
            "arch": self.arch,
            "arch_args": self.arch_args,
            "input_name": self.input_name,
            "channel_order": self.channel_order,
            "scale": self.scale,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "size": self.size.to_dict(),
            "batch": self.batch,
            "output": self.output,
            "activation": self.activation,
            "output_channels": self.output_channels,
            "output_name": self.output_name,
            "preferred_side": self.preferred_side,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> ModelCard:
        """Rebuild a card from stored JSON; a malformed card is a MoptError naming ``source``."""
        if not isinstance(data, dict):
            raise MoptError(f"{source} is not a JSON object")
        if int(data.get("card_version", 1)) > CARD_VERSION:
            raise MoptError(f"{source} has card version {data['card_version']}; upgrade mopt to read it")
        try:
            output = data.get("output")
            return cls(
                arch=str(data["arch"]),
                arch_args=dict(data.get("arch_args") or {}),
                input_name=str(data.get("input_name", DEFAULT_INPUT_NAME)),
                channel_order=str(data.get("channel_order", "RGB")),
                scale=float(data.get("scale", 1 / 255)),
                mean=tuple(float(v) for v in data["mean"]) if data.get("mean") is not None else None,
                std=tuple(float(v) for v in data["std"]) if data.get("std") is not None else None,
                size=SizeRule.from_dict(dict(data.get("size") or {})),
                batch=int(data["batch"]) if data.get("batch") is not None else None,
                output=output if output is None or isinstance(output, int) else str(output),
                activation=str(data.get("activation", "none")),
                output_channels=int(data.get("output_channels", 1)),
                output_name=str(data.get("output_name", DEFAULT_OUTPUT_NAME)),
                preferred_side=int(data["preferred_side"]) if data.get("preferred_side") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MoptError(f"{source} is malformed ({exc!r}); re-create the file with `mopt import`") from exc

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        try:
            return cls.from_dict(json.loads(text), source)
        except json.JSONDecodeError as exc:
            raise MoptError(f"{source} is not JSON: {exc}") from exc

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)


def input_card(spec: ModelCard | Normalization) -> ModelCard:
    """A card for preprocessing: ``spec`` itself, or the RGB/255 card of a legacy normalization."""
    if isinstance(spec, ModelCard):
        return spec
    return ModelCard(arch="unknown", mean=tuple(spec.mean), std=tuple(spec.std))


def legacy_card(arch: str, config: dict[str, Any], normalization: Normalization | None) -> ModelCard:
    """The card of a file written before cards: a registered architecture, ImageNet-style input, one alpha."""
    norm = normalization or IMAGENET
    return ModelCard(arch=arch, arch_args=dict(config), mean=tuple(norm.mean), std=tuple(norm.std))


def exported_card(card: ModelCard, input_name: str, output_name: str) -> ModelCard:
    """The card of the ONNX exported from a model with ``card``: its one output is the result, activated."""
    return card.replace(input_name=input_name, output=None, activation="none", output_name=output_name)


def card_options(
    base: ModelCard,
    *,
    input_name: str | None = None,
    bgr: bool | None = None,
    normalization: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    size_multiple: int | None = None,
    output: str | None = None,
    activation: str | None = None,
    output_channels: int | None = None,
) -> ModelCard:
    """Apply the command-line card options of ``mopt import`` to ``base`` (None = keep the base's value).

    Raises:
        MoptError: contradictory or malformed options (one line each).
    """
    changes: dict[str, Any] = {}
    if input_name is not None:
        changes["input_name"] = input_name
    if bgr is not None:
        changes["channel_order"] = "BGR" if bgr else "RGB"
    if normalization is not None:
        if mean is not None or std is not None:
            raise MoptError("give --normalization or --mean/--std, not both")
        presets = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "none": (None, None)}
        if normalization.lower() not in presets:
            raise MoptError(f"--normalization {normalization!r} is unknown; choose imagenet or none")
        changes["mean"], changes["std"] = presets[normalization.lower()]
    if (mean is None) != (std is None):
        raise MoptError("give --mean and --std together (three comma-separated values each)")
    if mean is not None:
        changes["mean"], changes["std"] = _three_floats(mean, "--mean"), _three_floats(std, "--std")
    if scale is not None:
        changes["scale"] = scale
    if size is not None and size_multiple is not None:
        raise MoptError("give --size (a fixed size) or --size-multiple, not both")
    if size is not None:
        changes["size"] = SizeRule(fixed=tuple(size))
    if size_multiple is not None:
        changes["size"] = SizeRule(multiple=size_multiple)
    if output is not None:
        changes["output"] = int(output) if output.lstrip("-").isdigit() else output
    if activation is not None:
        changes["activation"] = activation
    if output_channels is not None:
        changes["output_channels"] = output_channels
        if output_channels == 3 and base.output_name == DEFAULT_OUTPUT_NAME:
            changes["output_name"] = IMAGE_OUTPUT_NAME
    return base.replace(**changes)


def _three_floats(text: str, option: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise MoptError(f"{option} {text!r} is not three comma-separated numbers, e.g. 0.485,0.456,0.406") from exc
    if len(values) != 3:
        raise MoptError(f"{option} {text!r} needs three comma-separated numbers, got {len(values)}")
    return values  # type: ignore[return-value]
