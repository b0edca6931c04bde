"""Which model file a command runs: path, content hash, architecture and precision, said before it runs.

Defaults pick files from ``engines/``; a user who did not name the file must still see which one ran, and a
result (a JSON report, a Triton config) must say it too, so that two runs can be told apart afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optimize.errors import MoptError
from optimize.fileio import file_sha256

SHA_PREFIX = 12  # hex digits shown on the console; the JSON records the full hash


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model file.

    Attributes:
        path: the file as the user (or the default) named it.
        sha256: hex sha256 of its bytes.
        arch: the architecture its model card names (``cvunet-mbv3-large``, ``onnx`` for a foreign ONNX).
        precision: ``mopt.precision`` of an ONNX, or the precision an engine was built with.
    """

    path: Path
    sha256: str
    arch: str
    precision: str

    def describe(self) -> str:
        """``engines/cvunet.sim.onnx (sha256 0123456789ab, cvunet-mbv3-large, fp32)``."""
        return f"{self.path} (sha256 {self.sha256[:SHA_PREFIX]}, {self.arch}, {self.precision})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def model_identity(path: str | Path) -> ModelIdentity:
    """The identity of an ONNX model or a TensorRT engine (its card and precision from the JSON sidecar).

    Raises:
        MoptError: the file does not exist or is not a readable ONNX / engine sidecar.
    """
    from optimize.engine import ENGINE_SUFFIXES, read_sidecar

    path = Path(path)
    if not path.is_file():
        raise MoptError(f"model {path} does not exist; give the path of an ONNX model or a TensorRT engine")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        sidecar = read_sidecar(path) or {}
        card = sidecar.get("card") or {}
        arch = str(card.get("arch") or "unknown (no sidecar card)")
        precision = str(sidecar.get("precision", "unknown"))
    else:
        from optimize.onnx_model import card_of_onnx, onnx_precision

        arch = card_of_onnx(path).arch
        precision = onnx_precision(path)
    return ModelIdentity(path=path, sha256=file_sha256(path), arch=arch, precision=precision)
