"""The Polygraphy runner, now :mod:`optimize.backends.polygraphy_runner`; this name keeps old imports working."""

from __future__ import annotations

from optimize.backends.polygraphy_runner import BackendRunner

__all__ = ["BackendRunner"]
