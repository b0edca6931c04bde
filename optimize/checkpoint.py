"""Checkpoints: save and load model weights and their card without ever executing code from the file.

A ``.pth`` is a plain dict of primitives and tensors::

    {"format": "mopt-checkpoint", "format_version": 2, "arch": str, "config": dict, "card": dict,
     "normalization": {"mean": [..3], "std": [..3]}, "state_dict": {name: tensor}, "mopt_version": str,
     "extra": dict}

It is read with ``torch.load(weights_only=True)``, whose unpickler accepts only tensors and primitive
containers, so a malicious file cannot run code. A ``.safetensors`` file stores the same fields as string
metadata beside the tensors. A bare state dict (a mapping of tensors) loads when the architecture is given.
Format 1 files (before cards) derive their card from their architecture and normalization.

``arch`` is a reference (see :mod:`architectures.adapters`). A checkpoint that names a Python factory is only
built when the user trusts that factory (``--arch`` naming it, or ``MOPT_TRUSTED_ARCHS``): the file alone
never makes mopt import a module.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import architectures
from architectures.adapters import (
    ResultHead,
    arch_kind,
    build_module,
    default_card_fields,
    inner_module,
    is_trusted_factory,
    untrusted_factory_error,
)
from optimize import __version__
from optimize.card import IMAGENET, ModelCard, Normalization, legacy_card
from optimize.defaults import BUNDLED_CHECKPOINTS as BUNDLED_CHECKPOINTS
from optimize.defaults import DEFAULT_CHECKPOINT as DEFAULT_CHECKPOINT
from optimize.defaults import DEFAULT_MATTE_CHECKPOINT as DEFAULT_MATTE_CHECKPOINT
from optimize.errors import MoptError
from optimize.fileio import atomic_output, file_sha256

FORMAT_NAME = "mopt-checkpoint"
FORMAT_VERSION = 2


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a checkpoint, in eval mode, with what the rest of the pipeline needs to know.

    Attributes:
        model: the runnable model: input in, the result out (output selected, activation applied).
        card: the model's I/O contract.
    """

    model: nn.Module
    arch: str
    config: Any
    normalization: Normalization
    sha256: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    card: ModelCard | None = None


def card_for_module(
    arch: str, config: dict[str, Any], model: nn.Module, normalization: Normalization | None
) -> ModelCard:
    """The default card of a freshly built module: the architecture's declared contract over mopt's defaults."""
    card = legacy_card(arch, config, normalization)
    fields = default_card_fields(arch, inner_module(model))
    if not fields:
        return card
    return ModelCard.from_dict({**card.to_dict(), **fields}, f"the card of architecture {arch!r}")


def runnable(model: nn.Module, card: ModelCard) -> nn.Module:
    """``model`` with the card's output selection and activation applied in its forward (unchanged if none)."""
    model = inner_module(model)
    if card.output is None and card.activation == "none":
        return model
    return ResultHead(model, card.output, card.activation)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    normalization: Normalization = IMAGENET,
    extra: dict[str, Any] | None = None,
    card: ModelCard | None = None,
) -> Path:
    """Write ``model`` and its card to ``.pth`` or ``.safetensors``, atomically.

    Args:
        model: a registry model (it carries ``arch_name`` and ``config``), or any module when ``card`` is given.
        path: destination; the suffix picks the format.
        normalization: the input normalization the weights were trained with (when no card is given).
        extra: JSON-safe facts to keep (training command, validation IoU, source file, ...).
        card: the model's I/O contract; derived from the registry model and ``normalization`` when None.
    """
    path = Path(path)
    module = inner_module(model)
    if card is None:
        if not hasattr(module, "arch_name"):
            raise MoptError("only models built with architectures.create_model can be saved without a model card")
        config = architectures.config_to_dict(module.config)
        card = card_for_module(module.arch_name, config, module, normalization)
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": card.arch,
        "config": card.arch_args,
        "card": card.to_dict(),
        "normalization": (card.normalization or normalization).to_dict(),
        "mopt_version": __version__,
        "extra": extra or {},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_output(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in header.items()})
        elif path.suffix in (".pth", ".pt"):
            torch.save({**header, "state_dict": state}, tmp)
        else:
            raise MoptError(f"checkpoint path {path} must end in .pth, .pt or .safetensors")
    return path


def read_weights_file(path: str | Path) -> dict[str, Any]:
    """The dict a ``.pth``/``.pt`` or ``.safetensors`` file holds, read without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise MoptError(f"checkpoint {path} does not exist; give the path to a .pth or .safetensors file")
    return _read_safetensors(path) if path.suffix == ".safetensors" else _read_pth(path)


def _read_pth(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle starting with the protocol byte.
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise MoptError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip nor a pickle); give a .pth file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global that is not a tensor or primitive: that is the safety net working.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise MoptError(
            f"{path} holds Python objects{what}, not only tensors and plain data; mopt never unpickles objects: "
            f"save model.state_dict() and import it with `mopt import FILE --arch ...`"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, struct.error) as exc:
        # A truncated or foreign file breaks the unpickler in many ways; all mean "not a checkpoint".
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoptError(f"{path} is not a readable PyTorch checkpoint (truncated or damaged): {first}") from exc
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


def load_checkpoint(
    path: str | Path, arch: str | None = None, device: str = "cpu", arch_args: dict[str, Any] | None = None
) -> LoadedCheckpoint:
    """Rebuild the model stored in ``path``.

    Args:
        path: a ``.pth``/``.pt`` or ``.safetensors`` file.
        arch: the architecture the user named on the command line: required for a bare state dict, checked
            against a full checkpoint, and the only way (besides ``MOPT_TRUSTED_ARCHS``) to trust a checkpoint
            that names a Python factory.
        device: where to put the model.
        arch_args: the architecture's arguments for a bare state dict.

    Raises:
        MoptError: the file is missing, unreadable, unsafe, untrusted, or its weights do not fit the architecture.
    """
    path = Path(path)
    data = read_weights_file(path)
    card: ModelCard | None = None
    normalization = IMAGENET
    if _is_state_dict(data):
        if arch is None:
            raise MoptError(
                f"{path} is a bare state dict with no architecture; pass --arch (one of "
                f"{', '.join(architectures.list_models())}, smp:NAME or package.module:factory), or turn it into "
                f"a mopt checkpoint with `mopt import {path} --arch ...`"
            )
        state, config, extra = data, dict(arch_args or {}), {}
    else:
        if data.get("format") != FORMAT_NAME or "state_dict" not in data:
            raise MoptError(f"{path} is not a mopt checkpoint (no '{FORMAT_NAME}' header and not a state dict)")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise MoptError(
                f"{path} has checkpoint format {data['format_version']}; "
                f"this mopt reads up to {FORMAT_VERSION}: upgrade mopt"
            )
        stored_arch = str(data["arch"])
        if arch is not None and arch != stored_arch:
            raise MoptError(
                f"{path} holds architecture {stored_arch!r}, not {arch!r}; drop --arch or pick the right file"
            )
        # Decide trust before anything is imported: the file alone never names code to run.
        if arch_kind(stored_arch) == "factory" and not is_trusted_factory(stored_arch, arch):
            raise untrusted_factory_error(stored_arch, path)
        arch, state, config = stored_arch, data["state_dict"], dict(data.get("config") or {})
        normalization = Normalization.from_dict(data.get("normalization", IMAGENET.to_dict()))
        if "card" in data:
            card = ModelCard.from_dict(data["card"], f"the model card of {path}")
        extra = data.get("extra", {})

    module = build_module(arch, config, trusted=True)  # a factory got here only when trusted
    load_weights(module, state, f"{path}", arch)
    card = card or card_for_module(arch, config, module, normalization)
    model = runnable(module, card).eval().to(device)
    return LoadedCheckpoint(
        model,
        arch,
        getattr(module, "config", config),
        card.normalization or normalization,
        file_sha256(path),
        path,
        extra,
        card,
    )


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load ``state`` into ``module`` strictly; a mismatch lists the missing, unexpected and misshapen keys."""
    expected, found = set(module.state_dict()), set(state)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing and all(k.endswith("num_batches_tracked") for k in missing):
        # Files saved before PyTorch 0.4.1 have no BatchNorm step counters; eval never reads them.
        state = {**state, **{k: module.state_dict()[k] for k in missing}}
        missing = []
    if missing or unexpected:
        raise MoptError(
            f"{source} does not fit architecture {arch!r}: {len(missing)} missing key(s) "
            f"[{_preview(missing)}], {len(unexpected)} unexpected key(s) [{_preview(unexpected)}]"
        )
    mismatched = [k for k, v in module.state_dict().items() if v.shape != state[k].shape]
    if mismatched:
        k = mismatched[0]
        raise MoptError(
            f"{source} does not fit architecture {arch!r}: {len(mismatched)} tensor(s) of the wrong shape, e.g. "
            f"{k} is {tuple(state[k].shape)} in the file and {tuple(module.state_dict()[k].shape)} in the model"
        )
    module.load_state_dict(state)


def state_dict_of(data: dict[str, Any], source: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a foreign weights file: bare, or under ``state_dict``/``model``, ``module.`` stripped.

    Training scripts save ``{"state_dict": ...}``, ``{"model": ...}`` (with optimizer state beside it), or the
    state dict of a ``DataParallel`` wrapper, whose keys all start with ``module.``.
    """
    state: Any = data
    for key in ("state_dict", "model", "model_state_dict"):
        if not _is_state_dict(state) and isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not _is_state_dict(state):
        keys = ", ".join(list(data)[:6])
        raise MoptError(
            f"{source} holds no state dict (top-level keys: {keys}); save the model's state_dict() "
            f"or a dict with it under 'state_dict' or 'model'"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _preview(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
