"""Which Triton Inference Server release can load an engine: a serialized TensorRT engine is readable only by the
TensorRT version that built it, and each Triton container ships one TensorRT.

The table is NVIDIA's Triton "Release Compatibility Matrix" (Triton's docs/introduction/compatibility.md, container
``nvcr.io/nvidia/tritonserver:<YY.MM>-trtllm-python-py3``, releases 24.05 to 26.07). It is the one NVIDIA table
that lists the TensorRT of each Triton release; the plain ``-py3`` container's TensorRT is listed in NVIDIA's
Deep Learning Frameworks support matrix instead and can differ for the same month. Releases and TensorRT versions
it does not list are reported as unknown, never guessed.

Versions are matched on major.minor.patch: engines record the full ``trt.__version__`` and Triton's table lists
four parts for most releases, but the patch release is what decides whether a plan deserializes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from optimize.errors import MoptError

CONTAINER = "trtllm-python-py3"
IMAGE = "nvcr.io/nvidia/tritonserver:{release}-" + CONTAINER

# Triton release (YY.MM) -> TensorRT version in that release's container, newest first.
TRITON_TENSORRT: dict[str, str] = {
    "26.07": "10.14.1.48",
    "26.06": "10.14.1.48",
    "26.05": "10.14.1.48",
    "26.04": "10.14.1.48",
    "26.03": "10.14.1.48",
    "26.02": "10.13.3.9",
    "26.01": "10.13.3.9",
    "25.12": "10.13.3.9",
    "25.11": "10.13.3.9",
    "25.10": "10.11.0.33",
    "25.09": "10.11.0.33",
    "25.08": "10.11.0.33",
    "25.07": "10.10.0.31",
    "25.06": "10.10.0.31",
    "25.05": "10.9.0.34",
    "25.04": "10.9.0.34",
    "25.03": "10.9.0.34",
    "25.02": "10.8.0.43",
    "25.01": "10.8.0.43",
    "24.12": "10.7.0",
    "24.11": "10.6.0",
    "24.10": "10.4.0",
    "24.09": "10.4.0",
    "24.08": "10.3.0",
    "24.07": "10.1.0",
    "24.06": "10.0.1",
    "24.05": "10.0.1.6",
}

_RELEASE = re.compile(r"^\d{2}\.\d{2}$")


def _patch(version: str) -> tuple[int, int, int]:
    from optimize.tensorrt_api import parse_version

    return parse_version(version)


def releases_for_tensorrt(tensorrt_version: str | None) -> list[str]:
    """Triton releases (newest first) whose container ships the TensorRT patch release ``tensorrt_version``."""
    if not tensorrt_version:
        return []
    try:
        wanted = _patch(tensorrt_version)
    except MoptError:
        return []
    return [release for release, trt in TRITON_TENSORRT.items() if _patch(trt) == wanted]


@dataclass(frozen=True)
class TritonMatch:
    """What is known about serving an engine of one TensorRT version with Triton.

    Attributes:
        tensorrt_version: the engine's TensorRT version (``None``: the sidecar does not say).
        releases: Triton releases whose container ships that TensorRT, newest first (empty: none known).
    """

    tensorrt_version: str | None
    releases: tuple[str, ...]

    def advice(self) -> str:
        """One sentence: which Triton to run the engine with."""
        if not self.tensorrt_version:
            return "the engine's sidecar does not record its TensorRT version: run it with a Triton of that version"
        if self.releases:
            listed = ", ".join(self.releases)
            return (
                f"serve it with Triton {listed} ({IMAGE.format(release=self.releases[0])} ships TensorRT "
                f"{TRITON_TENSORRT[self.releases[0]]}); another TensorRT cannot load the engine"
            )
        return (
            f"no Triton release in mopt's table ({oldest()}-{newest()}, {CONTAINER}) ships TensorRT "
            f"{self.tensorrt_version}: serve it with a Triton whose TensorRT is {self.tensorrt_version}, or rebuild "
            f"the engine with the TensorRT of your Triton"
        )


def triton_match(tensorrt_version: str | None) -> TritonMatch:
    """The Triton releases that can load an engine built with ``tensorrt_version``."""
    return TritonMatch(tensorrt_version, tuple(releases_for_tensorrt(tensorrt_version)))


def newest() -> str:
    return max(TRITON_TENSORRT)


def oldest() -> str:
    return min(TRITON_TENSORRT)


def check_triton_release(release: str, tensorrt_version: str | None) -> None:
    """Refuse ``release`` unless its TensorRT can load an engine built with ``tensorrt_version``.

    Raises:
        MoptError: ``release`` is not ``YY.MM``, is not in the table (its TensorRT is unknown), the engine's
            TensorRT is unknown, or the two TensorRT versions differ.
    """
    if not _RELEASE.match(release):
        raise MoptError(f"--triton-version {release!r} is not a Triton release like 25.11 (YY.MM)")
    if release not in TRITON_TENSORRT:
        raise MoptError(
            f"Triton {release} is not in mopt's table of Triton releases ({oldest()}-{newest()}), so its TensorRT is "
            f"unknown: check that it ships TensorRT {tensorrt_version or '(unknown)'} and drop --triton-version"
        )
    if not tensorrt_version:
        raise MoptError(
            "the engine's sidecar does not record its TensorRT version, so --triton-version cannot be checked: "
            "rebuild it with `mopt build-engine --force` or drop --triton-version"
        )
    shipped = TRITON_TENSORRT[release]
    if _patch(shipped) != _patch(tensorrt_version):
        raise MoptError(
            f"Triton {release} ships TensorRT {shipped}, which cannot load an engine built with TensorRT "
            f"{tensorrt_version}: {triton_match(tensorrt_version).advice()}"
        )
