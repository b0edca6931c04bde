"""Checkpoints: save and load CV-UNet weights without ever executing code from the file.

A ``.pth`` is a plain dict of primitives and tensors::

    {"format": "mopt-checkpoint", "format_version": 1, "arch": str, "config": dict,
     "normalization": {"mean": [..3], "std": [..3]}, "state_dict": {name: tensor}, "mopt_version": str,
     "extra": dict}

It is read with ``torch.load(weights_only=True)``, whose unpickler accepts only tensors and primitive
containers, so a malicious file cannot run code. A ``.safetensors`` file stores the same fields as string
metadata beside the tensors. A bare state dict (a mapping of tensors) loads when the architecture is given.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import architectures
from optimize import __version__
from optimize.errors import MoptError
from optimize.fileio import atomic_output, file_sha256

FORMAT_NAME = "mopt-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path("checkpoints/cvunet.pth")


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalization: ``x = (rgb / 255 - mean) / std`` on RGB channels."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

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


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode, with what the rest of the pipeline needs to know."""

    model: nn.Module
    arch: str
    config: Any
    normalization: Normalization
    sha256: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    normalization: Normalization = IMAGENET,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (built by :func:`architectures.create_model`) to ``.pth`` or ``.safetensors``, atomically.

    Args:
        model: a registry model; its ``arch_name`` and ``config`` are stored.
        path: destination; the suffix picks the format.
        normalization: the input normalization the weights were trained with.
        extra: JSON-safe facts to keep (training command, validation IoU, ...).
    """
    path = Path(path)
    if not hasattr(model, "arch_name"):
        raise MoptError("only models built with architectures.create_model can be saved (they carry their config)")
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": model.arch_name,
        "config": architectures.config_to_dict(model.config),
        "normalization": normalization.to_dict(),
        "mopt_version": __version__,
        "extra": extra or {},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in header.items()})
        elif path.suffix in (".pth", ".pt"):
            torch.save({**header, "state_dict": state}, tmp)
        else:
            raise MoptError(f"checkpoint path {path} must end in .pth, .pt or .safetensors")
    return path


def _read_pth(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global that is not a tensor or primitive: that is the safety net working.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "disallowed object"
        raise MoptError(
            f"{path} holds objects other than tensors and plain data, refused for safety ({first})"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, struct.error) as exc:
        # A truncated or foreign file breaks the unpickler in many ways; all mean "not a checkpoint".
        raise MoptError(f"{path} is not a readable PyTorch checkpoint (truncated or another format): {exc}") from exc
    if not isinstance(data, dict):
        raise MoptError(f"{path} holds a {type(data).__name__}, not a checkpoint dict or state dict")
    return data


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MoptError(f"{path} is not a readable safetensors file (truncated or another format): {exc}") from exc
    try:
        header = {k: json.loads(v) for k, v in metadata.items()}
    except json.JSONDecodeError as exc:
        raise MoptError(f"{path} has safetensors metadata that is not mopt JSON: {exc}") from exc
    if not header:
        return state  # a bare state dict
    return {**header, "state_dict": state}


def _is_state_dict(data: dict[str, Any]) -> bool:
    return bool(data) and all(isinstance(v, torch.Tensor) for v in data.values())


def load_checkpoint(path: str | Path, arch: str | None = None, device: str = "cpu") -> LoadedCheckpoint:
    """Rebuild the model stored in ``path``.

    Args:
        path: a ``.pth``/``.pt`` or ``.safetensors`` file.
        arch: architecture name; required for a bare state dict, checked against a full checkpoint.
        device: where to put the model.

    Raises:
        MoptError: the file is missing, unreadable, unsafe, or its weights do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise MoptError(f"checkpoint {path} does not exist; give the path to a .pth or .safetensors file")
    data = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pth(path)

    if _is_state_dict(data):
        if arch is None:
            raise MoptError(
                f"{path} is a bare state dict with no architecture; "
                f"pass --arch (one of {', '.join(architectures.list_models())})"
            )
        state, config_dict, normalization, extra = data, {}, IMAGENET, {}
    else:
        if data.get("format") != FORMAT_NAME or "state_dict" not in data:
            raise MoptError(f"{path} is not a mopt checkpoint (no '{FORMAT_NAME}' header and not a state dict)")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise MoptError(
                f"{path} has checkpoint format {data['format_version']}; "
                f"this mopt reads up to {FORMAT_VERSION}: upgrade mopt"
            )
        stored_arch = data["arch"]
        if arch is not None and arch != stored_arch:
            raise MoptError(
                f"{path} holds architecture {stored_arch!r}, not {arch!r}; drop --arch or pick the right file"
            )
        arch, state, config_dict = stored_arch, data["state_dict"], data.get("config", {})
        normalization = Normalization.from_dict(data.get("normalization", IMAGENET.to_dict()))
        extra = data.get("extra", {})

    model = architectures.create_model(arch, **config_dict)
    expected, found = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise MoptError(
            f"{path} does not fit architecture {arch!r}: {len(missing)} missing key(s) "
            f"[{_preview(missing)}], {len(unexpected)} unexpected key(s) [{_preview(unexpected)}]"
        )
    mismatched = [k for k, v in model.state_dict().items() if v.shape != state[k].shape]
    if mismatched:
        k = mismatched[0]
        raise MoptError(
            f"{path} does not fit architecture {arch!r}: {len(mismatched)} tensor(s) of the wrong shape, e.g. "
            f"{k} is {tuple(state[k].shape)} in the file and {tuple(model.state_dict()[k].shape)} in the model"
        )
    model.load_state_dict(state)
    model.eval().to(device)
    return LoadedCheckpoint(model, arch, model.config, normalization, file_sha256(path), path, extra)


def _preview(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
