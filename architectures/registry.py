"""Models are built by name: ``create_model("cvunet-mbv3-large", width_mult=0.75)``.

Each variant registers a factory that turns a frozen config dataclass into a module. The config is what a
checkpoint stores, so a checkpoint can be rebuilt without pickling any Python object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from optimize.errors import MoptError


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its default config and the function that builds a module from a config."""

    name: str
    default_config: Any
    build: Callable[[Any], nn.Module]
    description: str
    card: dict[str, Any] = dataclasses.field(default_factory=dict)  # I/O contract fields that differ from the default


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, default_config: Any, description: str, card: dict[str, Any] | None = None) -> Callable:
    """Decorator: register ``build(config) -> nn.Module`` under ``name`` with its default config.

    Args:
        name: the architecture name checkpoints and ``--arch`` use.
        default_config: a frozen dataclass; overrides are validated against its fields.
        description: one line for ``mopt info --list``.
        card: model-card fields that differ from mopt's default contract (ImageNet-normalized RGB in, any
            H x W, one alpha out), e.g. ``{"mean": None, "std": None, "size": {"fixed": [256, 256]}}``.
    """

    def decorator(build: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, default_config, build, description, dict(card or {}))
        return build

    return decorator


def list_models() -> list[str]:
    """Names of every registered variant (built-in and from installed packages' entry points), sorted."""
    load_entry_points()
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered architecture (entry points of installed packages included)."""
    if name not in _REGISTRY:
        load_entry_points()
    return name in _REGISTRY


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``, or a MoptError listing the valid names."""
    if not is_registered(name):
        raise MoptError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


ENTRY_POINT_GROUP = "mopt.architectures"
_entry_points_loaded = False


def load_entry_points() -> list[str]:
    """Import the architecture modules that installed packages declare in the ``mopt.architectures`` group.

    Each entry point names a module (``mypkg.mopt_models``) whose import registers its variants with
    :func:`register_model`, as mopt's own modules do. An installed package is code the user chose to install,
    so importing it is as trusted as importing mopt; a checkpoint can only name an architecture, never a module.

    Returns:
        The names of the entry points that failed to load (each is reported, none stops mopt).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    failed = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:  # a broken third-party package must not break mopt: say which one and go on
            import warnings

            warnings.warn(f"mopt: architecture entry point {point.name!r} ({point.value}) failed: {exc}", stacklevel=2)
            failed.append(point.name)
    return failed


def model_config(name: str, **overrides: Any) -> Any:
    """The config of ``name`` with ``overrides`` applied (lists become tuples, as JSON round-trips them)."""
    default = model_entry(name).default_config
    valid = {f.name for f in dataclasses.fields(default)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise MoptError(
            f"unknown config field(s) {', '.join(unknown)} for architecture {name!r}; valid: {', '.join(sorted(valid))}"
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(default, **fixed)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the variant ``name``; the module keeps ``arch_name`` and ``config`` for checkpoints and export."""
    config = model_config(name, **overrides)
    try:
        model = model_entry(name).build(config)
    except ValueError as exc:  # inconsistent config values, e.g. from a checkpoint's stored config
        raise MoptError(f"invalid config for architecture {name!r}: {exc}") from exc
    model.arch_name = name
    model.config = config
    return model


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
