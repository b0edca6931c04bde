"""Parsing of the size and list options every command shares (``512x512``, ``1,8``, ``4x3x512x512``)."""

from __future__ import annotations

from optimize.errors import MoptError


def parse_dims(text: str, rank: int, what: str) -> tuple[int, ...]:
    """Parse ``AxBx...`` into ``rank`` positive integers, or raise a MoptError naming ``what``."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != rank or any(d <= 0 for d in dims):
        example = "x".join(["512"] * rank) if rank == 2 else "4x3x512x512"
        raise MoptError(f"{what} {text!r} is not {rank} positive integers separated by 'x' (e.g. {example})")
    return dims


def parse_size(text: str) -> tuple[int, int]:
    """``"512x384"`` -> ``(512, 384)`` as (height, width)."""
    return parse_dims(text, 2, "size")  # type: ignore[return-value]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"512x512,1024x768"`` -> ``[(512, 512), (1024, 768)]``."""
    return [parse_size(t.strip()) for t in text.split(",") if t.strip()]


def parse_ints(text: str, what: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``: positive integers only."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise MoptError(f"{what} {text!r} must be a comma-separated list of positive integers (e.g. 1,8)")
    return values


def format_size(height: int, width: int) -> str:
    return f"{height}x{width}"
