"""TensorRT optimization profiles: the min / opt / max input shapes an engine accepts, parsed and validated.

An engine built from an ONNX model with dynamic dims only runs shapes inside one of its profiles, and TensorRT
tunes its kernels for the ``opt`` shape. Everything here is plain Python so that a bad shape is reported (naming
the dim and the fix) before TensorRT is imported, on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from optimize.errors import MoptError
from optimize.shapes import parse_dims

DIM_NAMES = ("batch", "channels", "height", "width")
CHANNELS = 3  # the model takes RGB: every profile's channel dim is 3
Shape = tuple[int, int, int, int]


def format_shape(shape: Sequence[int]) -> str:
    """``(1, 3, 256, 256)`` -> ``"1x3x256x256"``."""
    return "x".join(str(d) for d in shape)


def parse_shape(text: str, what: str = "shape") -> Shape:
    """Parse ``BxCxHxW`` into four positive integers, or raise a MoptError naming ``what``."""
    return parse_dims(text.strip(), 4, what)  # type: ignore[return-value]


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile: every input shape between ``min`` and ``max`` runs, ``opt`` runs fastest.

    Attributes:
        min: smallest shape, ``(batch, channels, height, width)``.
        opt: the shape TensorRT tunes kernels for.
        max: largest shape; it also bounds the activation memory the engine reserves.
    """

    min: Shape
    opt: Shape
    max: Shape

    @classmethod
    def parse(cls, text: str) -> ShapeProfile:
        """``"1x3x256x256:4x3x512x512:8x3x1024x1024"`` -> a profile (not yet validated)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise MoptError(
                f"profile {text!r} is not min:opt:max (three BxCxHxW shapes separated by ':', e.g. {DEFAULT_PROFILE})"
            )
        lo, opt, hi = (parse_shape(p, f"profile {text!r} shape") for p in parts)
        return cls(lo, opt, hi)

    @classmethod
    def from_dict(cls, data: dict) -> ShapeProfile:
        """Inverse of :meth:`to_dict` (sidecar JSON)."""
        try:
            return cls(*(tuple(int(d) for d in data[k]) for k in ("min", "opt", "max")))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise MoptError(f"profile {data!r} is not a {{min, opt, max}} mapping of four integers each") from exc

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether an input of ``shape`` can run in this profile."""
        return len(shape) == 4 and all(lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True))

    def __str__(self) -> str:
        return f"{format_shape(self.min)}:{format_shape(self.opt)}:{format_shape(self.max)}"


DEFAULT_PROFILE = ShapeProfile(min=(1, 3, 256, 256), opt=(4, 3, 512, 512), max=(8, 3, 1024, 1024))


def profiles_from_options(
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
    profiles: Sequence[str] = (),
) -> list[ShapeProfile]:
    """Profiles from ``--min/--opt/--max`` and repeated ``--profile min:opt:max`` options.

    ``--min``/``--opt``/``--max`` make one profile; a missing one of the three is taken from
    :data:`DEFAULT_PROFILE`, so ``--max 8x3x2048x2048`` alone widens the default. Each ``--profile`` adds one
    more. With none of them, the default profile is used. The result is validated by :func:`validate_profile`.
    """
    result = []
    if min_shape or opt_shape or max_shape:
        result.append(
            ShapeProfile(
                parse_shape(min_shape, "--min") if min_shape else DEFAULT_PROFILE.min,
                parse_shape(opt_shape, "--opt") if opt_shape else DEFAULT_PROFILE.opt,
                parse_shape(max_shape, "--max") if max_shape else DEFAULT_PROFILE.max,
            )
        )
    result.extend(ShapeProfile.parse(p) for p in profiles)
    if not result:
        result.append(DEFAULT_PROFILE)
    for index, profile in enumerate(result):
        validate_profile(profile, index if len(result) > 1 else None)
    return result


def _label(index: int | None) -> str:
    return "profile" if index is None else f"profile {index}"


def validate_profile(profile: ShapeProfile, index: int | None = None) -> None:
    """Check one profile on its own: four positive dims, 3 channels, ``min <= opt <= max`` on every dim.

    Raises:
        MoptError: naming the profile, the dim and the fix.
    """
    label = _label(index)
    for which in ("min", "opt", "max"):
        shape = getattr(profile, which)
        if len(shape) != 4:
            raise MoptError(
                f"{label}: {which} {format_shape(shape)} has rank {len(shape)}; shapes are BxCxHxW (rank 4)"
            )
        if any(d <= 0 for d in shape):
            raise MoptError(f"{label}: {which} {format_shape(shape)} has a dim <= 0; every dim must be positive")
        if shape[1] != CHANNELS:
            raise MoptError(
                f"{label}: {which} {format_shape(shape)} has {shape[1]} channels; the model takes RGB: "
                f"use {format_shape((shape[0], CHANNELS, *shape[2:]))}"
            )
    for dim, name in enumerate(DIM_NAMES):
        lo, opt, hi = profile.min[dim], profile.opt[dim], profile.max[dim]
        if lo > opt:
            raise MoptError(
                f"{label}: {name} (dim {dim}) has min {lo} > opt {opt}; min <= opt <= max must hold on every dim: "
                f"lower the min {name} or raise the opt {name}"
            )
        if opt > hi:
            raise MoptError(
                f"{label}: {name} (dim {dim}) has opt {opt} > max {hi}; min <= opt <= max must hold on every dim: "
                f"lower the opt {name} or raise the max {name}"
            )


def onnx_input_dims(onnx_path: str | Path) -> tuple[str, list[int | str]]:
    """The name and dims of an ONNX model's image input: ints for fixed dims, names for dynamic ones.

    A dim with neither a value nor a name (unknown) is reported as ``"?"`` and treated as dynamic.
    """
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends share no narrower base
        raise MoptError(f"{onnx_path} is not a readable ONNX model: {exc}") from exc
    # Older exporters also list initializers as graph inputs; those are weights, not the image.
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise MoptError(f"{onnx_path} has {len(inputs)} inputs ({names}); a matting model has one image input")
    value = inputs[0]
    if not value.type.tensor_type.HasField("shape"):
        return value.name, ["?"] * 4
    dims: list[int | str] = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return value.name, dims


def profile_for_fixed_dims(profile: ShapeProfile, input_dims: Sequence[int | str]) -> ShapeProfile:
    """``profile`` with every dim the model fixes (a fixed H x W, a fixed batch) set to the model's value."""

    def fit(shape: Shape) -> Shape:
        return tuple(fixed if isinstance(fixed, int) and fixed > 0 else d for d, fixed in zip(shape, input_dims))

    return ShapeProfile(fit(profile.min), fit(profile.opt), fit(profile.max))


def validate_profiles(
    profiles: Sequence[ShapeProfile], input_dims: Sequence[int | str], model: str = "the ONNX", multiple: int = 1
) -> None:
    """Check profiles against the ONNX input: same rank, a fixed dim the same in min, opt and max, and H and W
    multiples of what the model needs.

    Args:
        profiles: the profiles to build.
        input_dims: from :func:`onnx_input_dims` (ints fixed, strings dynamic).
        model: how to name the model in messages (its path).
        multiple: the model card's size multiple (an encoder's output stride).

    Raises:
        MoptError: naming the profile, the dim, the model's value and the fix.
    """
    if not profiles:
        raise MoptError("no optimization profile given; omit --min/--opt/--max/--profile to use the default")
    if len(input_dims) != 4:
        shown = "x".join(str(d) for d in input_dims)
        raise MoptError(
            f"{model} input has rank {len(input_dims)} ({shown}); mopt builds engines for BxCxHxW (rank 4) inputs"
        )
    for index, profile in enumerate(profiles):
        validate_profile(profile, index if len(profiles) > 1 else None)
        for dim, (name, fixed) in enumerate(zip(DIM_NAMES, input_dims, strict=True)):
            if not isinstance(fixed, int):
                continue
            asked = {profile.min[dim], profile.opt[dim], profile.max[dim]}
            if asked != {fixed}:
                lo, hi = profile.min[dim], profile.max[dim]
                fix = (
                    "re-export with a dynamic batch (`mopt export` without --static-batch) or "
                    if name == "batch"
                    else ""
                )
                raise MoptError(
                    f"{_label(index if len(profiles) > 1 else None)}: {name} (dim {dim}) is fixed to {fixed} in "
                    f"{model} but the profile asks {lo}..{hi}: {fix}set the {name} to {fixed} in --min, --opt and --max"
                )
        if multiple > 1:
            for which, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
                if shape[2] % multiple or shape[3] % multiple:
                    near = (*shape[:2], *(max(multiple, round(d / multiple) * multiple) for d in shape[2:]))
                    raise MoptError(
                        f"{_label(index if len(profiles) > 1 else None)}: --{which} {format_shape(shape)} has H x W "
                        f"{shape[2]}x{shape[3]}, but {model} needs multiples of {multiple} (its model card): use e.g. "
                        f"{format_shape(near)}"
                    )
