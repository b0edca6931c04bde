"""Where build outputs go when no path is given, so that ``mopt export ckpt`` then ``mopt build-engine`` works.

Everything lands in ``engines/`` named after the checkpoint: ``cvunet.onnx`` -> ``cvunet.sim.onnx`` ->
``cvunet.sim.fp16.onnx`` / ``cvunet.sim.int8.onnx`` -> ``cvunet.sim.fp16.plan`` (+ ``.json`` sidecar).
"""

from __future__ import annotations

from pathlib import Path

from optimize.errors import MoptError

ENGINES_DIR = Path("engines")
PRECISION_SUFFIXES = (".fp16", ".int8")


def derived_path(source: str | Path, tag: str, suffix: str = ".onnx") -> Path:
    """``engines/cvunet.onnx`` + ``"sim"`` -> ``engines/cvunet.sim.onnx`` (beside the source)."""
    source = Path(source)
    return source.with_name(f"{source.name[: -len(source.suffix)]}.{tag}{suffix}")


def default_export_path(checkpoint: str | Path) -> Path:
    return ENGINES_DIR / f"{Path(checkpoint).stem}.onnx"


def latest_fp32_onnx(folder: Path = ENGINES_DIR, simplified: bool = True) -> Path:
    """The FP32 model the last ``mopt export`` / ``mopt simplify`` left in ``folder``.

    The newest export wins; its simplified version is returned when it exists and ``simplified`` is set.
    """
    return default_fp32_onnx(folder, simplified)[0]


def default_fp32_onnx(
    folder: Path = ENGINES_DIR, simplified: bool = True, made_from: tuple[str, str] | None = None
) -> tuple[Path, str]:
    """The FP32 model a command runs when none is named, and the sentence that says why that one.

    Args:
        folder: where ``mopt export`` writes.
        simplified: prefer the export's ``.sim.onnx`` when it exists.
        made_from: ``(sha256, label)`` of the checkpoint the model must have been exported from (a command that
            pairs it with that checkpoint); the newest export of that checkpoint wins over newer exports of
            other models, and none is an error rather than a pairing of two different models.

    Raises:
        MoptError: no export in ``folder`` (made from that checkpoint).
    """
    exports = [
        p for p in folder.glob("*.onnx") if not any(p.name.endswith(s + ".onnx") for s in (*PRECISION_SUFFIXES, ".sim"))
    ]
    if not exports:
        raise MoptError(f"no ONNX model in {folder}/; run `mopt export CHECKPOINT` first or pass the ONNX path")
    exports.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    why = f"default: newest FP32 export in {folder}/"
    if made_from is not None:
        from optimize.onnx_model import lineage_of

        sha, label = made_from
        matching = [p for p in exports if lineage_of(p) == sha]
        if not matching:
            raise MoptError(
                f"no ONNX in {folder}/ was exported from {label}; run `mopt export {label}` first, or name the "
                "ONNX (--onnx) and its checkpoint (--checkpoint)"
            )
        why = f"default: newest FP32 export of {label} in {folder}/"
        if matching[0] != exports[0]:
            why += f" (the newer {exports[0].name} is another model's)"
        exports = matching
    newest = exports[0]
    simplified_path = derived_path(newest, "sim")
    if simplified and simplified_path.exists():
        return simplified_path, why.replace("FP32 export", "FP32 export, simplified,", 1)
    return newest, why


def default_onnx_models(made_from: tuple[str, str] | None = None) -> list[tuple[Path, str]]:
    """The FP32 model left in engines/ plus its FP16 and INT8 versions when they were made, each with its why."""
    fp32, why = default_fp32_onnx(ENGINES_DIR, made_from=made_from)
    models = [(fp32, why)]
    for tag in ("fp16", "int8"):
        if (path := derived_path(fp32, tag)).exists():
            models.append((path, f"default: the {tag.upper()} version of {fp32}"))
    return models


def bundled_model_onnx(engines_dir: Path | None = None, checkpoint: Path | None = None) -> Path:
    """The bundled selfie model as ONNX, for ``mopt matte`` and ``mopt serve`` without a model: exported once.

    Both run an ONNX rather than the checkpoint: ONNX Runtime and OpenVINO are several times faster than PyTorch
    eager on this small network, and Triton serves no checkpoint. The export is redone when the checkpoint
    changed (the ONNX records the sha256 of the checkpoint it came from).

    Args:
        engines_dir: where to export (``engines/``).
        checkpoint: the bundled checkpoint (``checkpoints/selfie.pth`` in the package).
    """
    from optimize.defaults import DEFAULT_MATTE_CHECKPOINT
    from optimize.export import onnx_from_checkpoint
    from optimize.fileio import file_sha256
    from optimize.onnx_model import lineage_of

    checkpoint = checkpoint or DEFAULT_MATTE_CHECKPOINT
    if not checkpoint.is_file():
        raise MoptError(
            f"no model given and the bundled {checkpoint} is missing; pass --onnx, --engine or --checkpoint"
        )
    target = (engines_dir or ENGINES_DIR) / f"{checkpoint.stem}.onnx"
    if not target.is_file() or lineage_of(target) != file_sha256(checkpoint):
        onnx_from_checkpoint(checkpoint, target)
    return target
