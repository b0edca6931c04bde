"""Which model file a command runs: path, content hash, architecture and precision, said before it runs.

Defaults pick files from ``engines/``; a user who did not name the file must still see which one ran and why
that one, and a result (a JSON report, a Triton config) must say it too, so that two runs can be told apart
afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimize.errors import MoptError
from optimize.fileio import file_sha256

if TYPE_CHECKING:
    from optimize.checkpoint import LoadedCheckpoint

SHA_PREFIX = 12  # hex digits shown on the console; the JSON records the full hash
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies a model file.

    Attributes:
        path: the file as the user (or the default) named it.
        sha256: hex sha256 of its bytes.
        arch: the architecture its model card names (``cvunet-mbv3-large``, ``onnx`` for a foreign ONNX).
        precision: ``mopt.precision`` of an ONNX, the precision an engine was built with, ``fp32`` for a checkpoint.
        origin: where a default came from (``default: the newest FP32 ONNX in engines/ ...``); None when the
            user named the file.
        role: what the command does with it when it runs several (``reference``, ``candidate``).
    """

    path: Path
    sha256: str
    arch: str
    precision: str
    origin: str | None = None
    role: str | None = None

    def describe(self) -> str:
        """``engines/cvunet.sim.onnx (sha256 0123456789ab, cvunet-mbv3-large, fp32)``, then role and origin."""
        extra = "; ".join(x for x in (self.role, self.origin) if x)
        return f"{_shown(self.path)} (sha256 {self.sha256[:SHA_PREFIX]}, {self.arch}, {self.precision})" + (
            f" [{extra}]" if extra else ""
        )

    def with_role(self, role: str) -> ModelIdentity:
        return replace(self, role=role)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def _shown(path: Path) -> Path:
    """A path under the working folder as a relative one (a bundled default is absolute), others as they are."""
    try:
        return path.relative_to(Path.cwd()) if path.is_absolute() else path
    except ValueError:
        return path


def checkpoint_identity(loaded: LoadedCheckpoint, origin: str | None = None) -> ModelIdentity:
    """The identity of a checkpoint already loaded (its hash was taken while reading it)."""
    arch = loaded.card.arch if loaded.card is not None else loaded.arch
    return ModelIdentity(path=loaded.path, sha256=loaded.sha256, arch=arch, precision="fp32", origin=origin)


def model_identity(
    path: str | Path, origin: str | None = None, arch: str | None = None, kind: str | None = None
) -> ModelIdentity:
    """The identity of a checkpoint, an ONNX model or a TensorRT engine (its card from the JSON sidecar).

    Args:
        path: the model file.
        origin: where a default came from, shown with it.
        arch: the architecture of a bare state dict (``--arch``).
        kind: ``checkpoint`` where the command takes nothing else (its errors then speak of a checkpoint,
            whatever the suffix); by default the suffix decides.

    Raises:
        MoptError: the file does not exist or is not a readable checkpoint / ONNX / engine sidecar.
    """
    from optimize.engine import ENGINE_SUFFIXES, read_sidecar

    path = Path(path)
    if not path.is_file():
        raise MoptError(f"model {path} does not exist; give the path of a checkpoint, an ONNX model or an engine")
    suffix = path.suffix.lower()
    if kind == "checkpoint" or suffix in CHECKPOINT_SUFFIXES:
        from optimize.checkpoint import load_checkpoint

        return checkpoint_identity(load_checkpoint(path, arch=arch), origin)
    if suffix in ENGINE_SUFFIXES:
        sidecar = read_sidecar(path) or {}
        card = sidecar.get("card") or {}
        model_arch = str(card.get("arch") or "unknown (no sidecar card)")
        precision = str(sidecar.get("precision", "unknown"))
    else:
        from optimize.onnx_model import card_of_onnx, onnx_precision

        model_arch = card_of_onnx(path).arch
        precision = onnx_precision(path)
    return ModelIdentity(path=path, sha256=file_sha256(path), arch=model_arch, precision=precision, origin=origin)


def check_lineage(candidate: Path, expected: str | None, origin: str) -> None:
    """Refuse to pair a model with a reference it was not made from: their differences would be no verdict.

    Args:
        candidate: an ONNX model mopt wrote (it records the sha256 of the file it was made from).
        expected: the sha256 of the reference (a checkpoint, or the lineage of a reference ONNX); None skips.
        origin: how to name the reference in the message (``checkpoint checkpoints/cvunet.pth``).
    """
    from optimize.onnx_model import lineage_of

    found = lineage_of(candidate)
    if expected is None or found is None or found == expected:
        return
    raise MoptError(
        f"{candidate} was made from another model (sha256 {found[:SHA_PREFIX]}) than the {origin} "
        f"(sha256 {expected[:SHA_PREFIX]}); give the matching reference, or pass --allow-mismatch to pair them anyway"
    )
