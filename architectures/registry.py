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


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, default_config: Any, description: str) -> Callable:
    """Decorator: register ``build(config) -> nn.Module`` under ``name`` with its default config."""

    def decorator(build: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, default_config, build, description)
        return build

    return decorator


def list_models() -> list[str]:
    """Names of every registered variant, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``, or a MoptError listing the valid names."""
    if name not in _REGISTRY:
        raise MoptError(f"unknown architecture {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


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
