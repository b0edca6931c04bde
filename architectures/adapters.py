"""Modules mopt did not define: SMP models, user factories, and the head that turns any output into the result.

An architecture reference is one of:

- a registered name (``cvunet-mbv3-large``, ``u2netp``, or one an installed package registers through the
  ``mopt.architectures`` entry-point group);
- ``smp:<Architecture>`` (``smp:Unet``, ``smp:UnetPlusPlus``, ...), built by segmentation_models_pytorch with
  ``encoder_weights=None``: the checkpoint's weights are loaded afterwards, nothing is downloaded;
- ``package.module:callable``, a factory that returns an ``nn.Module``. Importing it runs its code, so it is
  only imported when the caller says the user trusts it (:func:`build_module`'s ``trusted``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from typing import Any

import torch
from torch import nn

from architectures.registry import create_model, is_registered, model_entry
from optimize.errors import MoptError

SMP_PREFIX = "smp:"
TRUSTED_ARCHS_ENV = "MOPT_TRUSTED_ARCHS"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def arch_kind(arch: str) -> str:
    """``registered``, ``smp`` or ``factory``; a MoptError for a reference of no known form."""
    if arch.startswith(SMP_PREFIX):
        return "smp"
    if _FACTORY.match(arch):
        return "factory"
    if is_registered(arch):
        return "registered"
    model_entry(arch)  # raises the "unknown architecture ...; choose one of" error
    raise AssertionError("unreachable")


def env_trusted_modules() -> set[str]:
    """Modules the user trusts through ``MOPT_TRUSTED_ARCHS`` (comma-separated module names)."""
    return {m.strip() for m in os.environ.get(TRUSTED_ARCHS_ENV, "").split(",") if m.strip()}


def is_trusted_factory(arch: str, named_on_command_line: str | None) -> bool:
    """A factory may be imported when the user named it (``--arch``) or listed its module in the environment."""
    return arch == named_on_command_line or arch.split(":")[0] in env_trusted_modules()


def untrusted_factory_error(arch: str, source: object) -> MoptError:
    module = arch.split(":")[0]
    return MoptError(
        f"{source} asks for the Python factory {arch!r}, which mopt imports only when you trust it: pass "
        f"--arch {arch} or set {TRUSTED_ARCHS_ENV}={module}"
    )


def build_module(arch: str, args: dict[str, Any] | None = None, trusted: bool = False) -> nn.Module:
    """Build the (untrained) module an architecture reference names.

    Args:
        arch: a registered name, ``smp:<Architecture>`` or ``package.module:callable``.
        args: keyword arguments (a registered architecture's config overrides, SMP's or the factory's kwargs).
        trusted: the user vouched for a factory reference (see :func:`is_trusted_factory`).

    Raises:
        MoptError: unknown or untrusted reference, bad arguments, or a factory that returns no ``nn.Module``.
    """
    args = dict(args or {})
    kind = arch_kind(arch)
    if kind == "registered":
        return create_model(arch, **args)
    if kind == "smp":
        return _smp_module(arch[len(SMP_PREFIX) :], args)
    if not trusted:
        raise untrusted_factory_error(arch, "this model")
    return _factory_module(arch, args)


def _factory_module(arch: str, args: dict[str, Any]) -> nn.Module:
    module_name, _, attr_path = arch.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise MoptError(f"cannot import {module_name!r} for --arch {arch}: {exc}; is the package installed?") from exc
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise MoptError(f"module {module_name!r} has no {attr_path!r} (from --arch {arch})")
        target = getattr(target, attr)
    if not callable(target):
        raise MoptError(f"--arch {arch} names a {type(target).__name__}, not a callable that returns an nn.Module")
    _check_kwargs(target, args, arch)
    try:
        model = target(**args)
    except TypeError as exc:
        raise MoptError(f"--arch {arch} rejected --arch-args {sorted(args)}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise MoptError(f"--arch {arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_kwargs(factory: Any, args: dict[str, Any], arch: str) -> None:
    """Name the wrong ``--arch-args`` keys before calling: a TypeError from deep inside is harder to read."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and C extensions may have no signature; the call will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise MoptError(
            f"--arch-args key(s) {', '.join(unknown)} are not parameters of {arch}; it takes: "
            f"{', '.join(sorted(accepted)) or 'no keyword arguments'}"
        )


def _smp_module(name: str, args: dict[str, Any]) -> nn.Module:
    from optimize.deps import require

    smp = require("segmentation_models_pytorch")
    if args.get("encoder_weights") not in (None, "None"):
        raise MoptError(
            "drop encoder_weights from --arch-args: mopt builds SMP models without downloading encoder weights "
            "and loads the checkpoint's weights instead"
        )
    args["encoder_weights"] = None
    try:
        return smp.create_model(arch=name, **args)
    except KeyError as exc:  # SMP raises KeyError for an unknown architecture or encoder name
        raise MoptError(f"segmentation_models_pytorch cannot build {name!r} with {args}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise MoptError(f"segmentation_models_pytorch rejected --arch-args for {name!r}: {exc}") from exc


def default_card_fields(arch: str, model: nn.Module) -> dict[str, Any]:
    """Card fields an architecture implies: a registered one's declared contract, an SMP model's output stride."""
    kind = arch_kind(arch)
    if kind == "registered":
        return dict(model_entry(arch).card)
    if kind == "smp":
        stride = int(getattr(getattr(model, "encoder", None), "output_stride", 32))
        classes = int(getattr(getattr(model, "segmentation_head", [None])[0], "out_channels", 1) or 1)
        # SMP heads return logits unless an activation was asked for.
        activated = getattr(getattr(model, "segmentation_head", [None, None, None])[-1], "activation", None)
        fields: dict[str, Any] = {"size": {"multiple": stride}, "output_channels": 3 if classes == 3 else 1}
        fields["activation"] = "none" if activated is not None and not isinstance(activated, nn.Identity) else "sigmoid"
        return fields
    return {}


class ResultHead(nn.Module):
    """The part of a model's forward that mopt adds: pick the result among several outputs, apply the activation.

    Args:
        model: the wrapped module; its state dict keys are kept under ``model.``, so checkpoints save
            ``head.model.state_dict()``.
        output: a dict key or output name (str), or an index into a tuple/list; None for a single tensor.
        activation: ``sigmoid`` to turn logits into [0, 1], ``none`` to pass the output through.
    """

    def __init__(self, model: nn.Module, output: str | int | None = None, activation: str = "none") -> None:
        super().__init__()
        self.model = model
        self.output = output
        self.activation = activation

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        result = select_output(self.model(image), self.output)
        return torch.sigmoid(result) if self.activation == "sigmoid" else result


def select_output(outputs: Any, selector: str | int | None) -> torch.Tensor:
    """The result tensor among a model's outputs; a MoptError that lists what there is when it is not found."""
    if isinstance(outputs, torch.Tensor):
        if selector not in (None, 0):
            raise MoptError(f"--output {selector!r} asked, but the model returns one tensor; drop --output")
        return outputs
    if isinstance(outputs, dict):
        keys = list(outputs)
        if selector is None and len(keys) == 1:
            return outputs[keys[0]]
        if isinstance(selector, int) and 0 <= selector < len(keys):
            return outputs[keys[selector]]
        if selector in outputs:
            return outputs[selector]
        raise MoptError(f"the model returns a dict with keys {keys}; pick the result with --output KEY")
    if isinstance(outputs, (tuple, list)):
        if selector is None and len(outputs) == 1:
            return outputs[0]
        if isinstance(selector, int) and -len(outputs) <= selector < len(outputs):
            return outputs[selector]
        raise MoptError(
            f"the model returns {len(outputs)} outputs; pick the result with --output INDEX (0 is the first)"
        )
    raise MoptError(f"the model returns a {type(outputs).__name__}, not a tensor, tuple or dict of tensors")


def inner_module(model: nn.Module) -> nn.Module:
    """The module whose weights a checkpoint stores (the one inside a :class:`ResultHead`)."""
    return model.model if isinstance(model, ResultHead) else model
