"""Foreign model -> mopt checkpoint or mopt ONNX, with its card (``mopt import``).

Sources: weights of an architecture the user names (a registered one such as ``u2netp``, ``smp:Unet``, or a
``package.module:factory``), an ONNX file, or MediaPipe's selfie-segmentation ``.tflite``. The result is
probed once before it is written: the selected output must be an ``N x C x H x W`` tensor at the input's
size with 1 (alpha) or 3 (image) channels, so a model that cannot go through the pipeline is refused here,
with the reason, rather than at some later stage.

A mopt ONNX always has one output, already activated: when the source graph has several outputs or returns
logits, the import keeps the selected output and appends the sigmoid in the graph, so every later stage
(simplify, precision, engines, Triton) sees the result directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from optimize import __version__
from optimize.card import ModelCard, exported_card
from optimize.checkpoint import (
    FORMAT_NAME,
    card_for_module,
    load_checkpoint,
    load_weights,
    read_weights_file,
    runnable,
    save_checkpoint,
    state_dict_of,
)
from optimize.errors import MoptError
from optimize.fileio import atomic_output, file_sha256
from optimize.onnx_model import card_of_model, graph_inputs, image_input, load_onnx, set_metadata, write_card

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
PROBE_SIZE = (64, 96)  # small, non-square: a probe, not a benchmark


@dataclass
class ImportResult:
    """What ``mopt import`` wrote.

    Attributes:
        path: the mopt checkpoint or ONNX.
        card: the card stored with it.
        probe_shape: the output shape of one probe run (input at the probe size).
        notes: facts the user should read (the output chosen by default, outputs outside [0, 1], ...).
    """

    path: Path
    card: ModelCard
    probe_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)


def parse_arch_args(text: str | None) -> dict[str, Any]:
    """``--arch-args`` JSON -> keyword arguments; a one-line MoptError when it is not a JSON object."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MoptError(f"--arch-args is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from exc
    if not isinstance(value, dict):
        raise MoptError(f"--arch-args must be a JSON object of keyword arguments, got {type(value).__name__}")
    return value


def import_model(
    source: str | Path,
    output: str | Path,
    arch: str | None = None,
    arch_args: dict[str, Any] | None = None,
    card_changes: dict[str, Any] | None = None,
) -> ImportResult:
    """Import ``source`` (weights, ONNX or TFLite) to ``output`` (``.pth``/``.safetensors`` or ``.onnx``).

    Args:
        source: the foreign model file.
        output: the mopt checkpoint (``.pth``, ``.safetensors``) or mopt ONNX (``.onnx``) to write.
        arch: the architecture reference for weights (the user names it, so a factory is trusted).
        arch_args: the architecture's keyword arguments.
        card_changes: card options (:func:`optimize.card.card_options` keywords) that override what is inferred.

    Raises:
        MoptError: a missing or unreadable source, a bad architecture or arguments, weights that do not fit,
            a graph with no float image input, or an output that is not an image-sized tensor.
    """
    source, output = Path(source), Path(output)
    if not source.is_file():
        raise MoptError(f"{source} does not exist; give a weights (.pth/.safetensors), .onnx or .tflite file")
    if output.suffix not in (".pth", ".pt", ".safetensors", ".onnx"):
        raise MoptError(f"output {output} must end in .pth, .safetensors (a mopt checkpoint) or .onnx (a mopt ONNX)")
    if output.resolve() == source.resolve():
        raise MoptError(f"output {output} is the source file; choose another -o (inputs are never modified)")
    card_changes = dict(card_changes or {})
    if source.suffix == ".onnx":
        if arch is not None or arch_args:
            raise MoptError("--arch/--arch-args describe PyTorch weights; an ONNX file brings its own graph: drop them")
        if output.suffix != ".onnx":
            raise MoptError(f"an ONNX model imports to a mopt ONNX: give -o with .onnx, not {output.name}")
        return onnx_from_foreign_onnx(source, output, card_changes)
    if source.suffix == ".tflite":
        return _from_tflite(source, output, card_changes)
    return checkpoint_from_weights(source, output, arch, arch_args, card_changes)


# --- PyTorch weights ---------------------------------------------------------------------------------------


def checkpoint_from_weights(
    source: Path,
    output: Path,
    arch: str | None,
    arch_args: dict[str, Any] | None,
    card_changes: dict[str, Any],
) -> ImportResult:
    """Weights + the architecture the user names -> a mopt checkpoint (or, for ``-o x.onnx``, its export)."""
    from architectures.adapters import build_module

    data = read_weights_file(source)
    if data.get("format") == FORMAT_NAME:  # already a mopt checkpoint: re-card it
        if arch_args:
            raise MoptError(f"{source} is a mopt checkpoint; its architecture arguments are stored: drop --arch-args")
        loaded = load_checkpoint(source, arch=arch)
        module, base = loaded.model, loaded.card
        arch = loaded.arch
    else:
        if arch is None:
            raise MoptError(
                f"{source} holds bare weights; name the architecture they belong to with --arch (a registered "
                f"name, smp:NAME or package.module:factory) and its --arch-args"
            )
        module = build_module(arch, arch_args, trusted=True)  # named on the command line: the user trusts it
        load_weights(module, state_dict_of(data, source), str(source), arch)
        base = card_for_module(arch, dict(arch_args or {}), module, None)
    card = apply_card_changes(base, card_changes)
    model = runnable(module, card).eval()
    probe_shape, notes = _probe_torch(model, card)
    card = _with_probed_channels(card, probe_shape, card_changes)
    extra = {"imported_from": source.name, "source_sha256": file_sha256(source), "imported_by": f"mopt {__version__}"}
    if output.suffix == ".onnx":
        return _export_imported(module, card, extra, output, probe_shape, notes)
    path = save_checkpoint(module, output, card=card, extra=extra)
    return ImportResult(path, card, probe_shape, notes)


def apply_card_changes(base: ModelCard, changes: dict[str, Any]) -> ModelCard:
    from optimize.card import card_options

    return card_options(base, **changes)


def _probe_torch(model: torch.nn.Module, card: ModelCard) -> tuple[tuple[int, ...], list[str]]:
    height, width = card.size.padded(*PROBE_SIZE)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((card.batch or 1, 3, height, width), np.float32))
    try:
        with torch.inference_mode():
            y = model(x)
    except MoptError:
        raise
    except Exception as exc:  # any error of a foreign forward: say where, keep it to one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MoptError(f"the model failed on a {height}x{width} probe input: {first}") from exc
    if not isinstance(y, torch.Tensor):
        from architectures.adapters import select_output

        y = select_output(y, None)  # one tensor in a dict/tuple is the result; several: the error lists them
    return _check_result_shape(tuple(y.shape), (height, width)), _range_notes(y.numpy(), card)


def _check_result_shape(shape: tuple[int, ...], size: tuple[int, int]) -> tuple[int, ...]:
    if len(shape) != 4 or shape[1] not in (1, 3) or tuple(shape[2:]) != tuple(size):
        raise MoptError(
            f"the model's result has shape {list(shape)} for a {size[0]}x{size[1]} input; mopt needs N x 1 x H x W "
            f"(alpha) or N x 3 x H x W (image) at the input's size: pick another output with --output"
        )
    return shape


def _range_notes(y: np.ndarray, card: ModelCard) -> list[str]:
    if card.output_channels == 1 and card.activation == "none" and (y.min() < -1e-3 or y.max() > 1 + 1e-3):
        return [
            f"the result ranges over [{y.min():.3g}, {y.max():.3g}], not [0, 1]: if it is logits, import with "
            f"--activation sigmoid"
        ]
    return []


def _with_probed_channels(card: ModelCard, shape: tuple[int, ...], changes: dict[str, Any]) -> ModelCard:
    if changes.get("output_channels") is not None or shape[1] == card.output_channels:
        return card
    from optimize.card import card_options

    return card_options(card, output_channels=shape[1])


def _export_imported(
    module: torch.nn.Module,
    card: ModelCard,
    extra: dict[str, Any],
    output: Path,
    probe_shape: tuple[int, ...],
    notes: list[str],
) -> ImportResult:
    """Write the imported checkpoint to a temporary file and export it: one verified path to ONNX."""
    import tempfile

    from optimize.export import onnx_from_checkpoint

    with tempfile.TemporaryDirectory(prefix="mopt-import-") as tmp:
        checkpoint = save_checkpoint(module, Path(tmp) / f"{output.stem}.pth", card=card, extra=extra)
        arch = card.arch if ":" in card.arch and not card.arch.startswith("smp:") else None
        result = onnx_from_checkpoint(checkpoint, output, arch=arch)
    # The checkpoint above was temporary: the ONNX descends from the source weights, say so.
    model = onnx.load(str(result.path))
    kept = [p for p in model.metadata_props if p.key != "mopt.checkpoint_sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    set_metadata(model, {"mopt.source_sha256": extra["source_sha256"], "mopt.imported_from": extra["imported_from"]})
    with atomic_output(result.path) as tmp:
        onnx.save(model, str(tmp))
    return ImportResult(result.path, card_of_model(model, result.path), probe_shape, notes)


def _from_tflite(source: Path, output: Path, card_changes: dict[str, Any]) -> ImportResult:
    """MediaPipe's selfie segmentation ``.tflite`` -> its registered PyTorch port (see optimize/tflite_import.py)."""
    from optimize.tflite_import import checkpoint_from_tflite

    if card_changes:
        raise MoptError("a .tflite brings its own contract (its port's card): drop the card options")
    if output.suffix == ".onnx":
        import tempfile

        from optimize.export import onnx_from_checkpoint

        with tempfile.TemporaryDirectory(prefix="mopt-import-") as tmp:
            checkpoint = checkpoint_from_tflite(source, Path(tmp) / f"{output.stem}.pth")
            path = onnx_from_checkpoint(checkpoint, output).path
        card = card_of_model(load_onnx(path, False), path)
        return ImportResult(path, card, (1, card.output_channels, *card.size.padded(*PROBE_SIZE)))
    path = checkpoint_from_tflite(source, output)
    card = load_checkpoint(path).card
    return ImportResult(path, card, (1, card.output_channels, *card.size.padded(*PROBE_SIZE)))


# --- ONNX ----------------------------------------------------------------------------------------------------


def onnx_from_foreign_onnx(source: Path, output: Path, card_changes: dict[str, Any]) -> ImportResult:
    """A foreign ONNX -> a mopt ONNX: one activated output, a dynamic batch where the graph allows, the card.

    The card starts from what the graph says (input name, fixed size, outputs) and the options complete it.
    """
    model = load_onnx(source)
    image_input(model, source)  # one float N x 3 x H x W input, or a one-line error
    notes: list[str] = []
    card = apply_card_changes(card_of_model(model, source), card_changes)
    outputs = [o.name for o in model.graph.output]
    selected = _selected_onnx_output(outputs, card.output, source, notes)
    model = _single_output(model, selected, card.activation)
    result_name = model.graph.output[0].name
    if card.batch is not None:
        model, dynamic = _dynamic_batch(model)
        if dynamic:
            card = card.replace(batch=None)
        else:
            notes.append(f"the graph's batch is fixed at {card.batch}: batches run one image at a time")
    card = exported_card(card, image_input(model, source).name, result_name)
    probe_shape = _probe_onnx(model, card, notes)
    card = _with_probed_channels(card, probe_shape, card_changes)
    set_metadata(
        model,
        {
            "mopt.precision": "fp32",
            "mopt.version": __version__,
            "mopt.imported_from": source.name,
            "mopt.source_sha256": file_sha256(source),
        },
    )
    write_card(model, card)
    with atomic_output(output) as tmp:
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return ImportResult(output, card, probe_shape, notes)


def _selected_onnx_output(outputs: list[str], selector: str | int | None, source: Path, notes: list[str]) -> str:
    if selector is None:
        if len(outputs) > 1:
            notes.append(f"{len(outputs)} outputs; using the first, {outputs[0]!r} (choose another with --output)")
        return outputs[0]
    if isinstance(selector, int):
        if not -len(outputs) <= selector < len(outputs):
            raise MoptError(f"--output {selector} is out of range: {source} has {len(outputs)} outputs {outputs}")
        return outputs[selector]
    if selector not in outputs:
        raise MoptError(f"--output {selector!r} is not an output of {source}; its outputs are {outputs}")
    return selector


def _single_output(model: onnx.ModelProto, name: str, activation: str) -> onnx.ModelProto:
    """Keep only output ``name`` (with a Sigmoid appended for logits) and drop the nodes nothing needs now."""
    kept = next(o for o in model.graph.output if o.name == name)
    del model.graph.output[:]
    if activation == "sigmoid":
        activated = _unique_name(model, "alpha")
        model.graph.node.append(helper.make_node("Sigmoid", [name], [activated], name=f"{activated}_sigmoid"))
        out = onnx.ValueInfoProto()
        out.CopyFrom(kept)
        out.name = activated
        model.graph.output.append(out)
    else:
        model.graph.output.append(kept)
    _drop_dead_nodes(model)
    return model


def _unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {t for n in model.graph.node for t in [*n.input, *n.output]} | {i.name for i in model.graph.input}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs no kept output depends on (the side outputs a selection leaves behind)."""
    needed = {o.name for o in model.graph.output}
    alive = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(i for i in node.input if i)
            # Subgraphs (If/Loop bodies) may read outer tensors; keep everything they could name.
            for attr in node.attribute:
                if attr.g is not None:
                    needed.update(i for n in attr.g.node for i in n.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(alive))
    used = {i for n in model.graph.node for i in n.input}
    weights = [w for w in model.graph.initializer if w.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(weights)
    names = {i for n in model.graph.node for i in [*n.input, *n.output]}
    infos = [v for v in model.graph.value_info if v.name in names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)


def _dynamic_batch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Make a fixed batch dim dynamic when the graph computes the same per image at batch 2; else keep it."""
    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    for value in [*graph_inputs(candidate), *candidate.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "batch"
    del candidate.graph.value_info[:]  # intermediate shapes recorded at the fixed batch would contradict
    try:
        from optimize.onnx_model import run_onnx

        fixed = model.graph.input[0].type.tensor_type.shape.dim
        h, w = (d.dim_value or PROBE_SIZE[i] for i, d in enumerate(fixed[2:4]))
        x = np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32)
        together = run_onnx(candidate, x, batch=2, label="model at batch 2")
        alone = np.concatenate([run_onnx(model, x[i : i + 1], batch=1) for i in range(2)])
    except MoptError:
        return model, False
    if together.shape != alone.shape or not np.allclose(together, alone, atol=1e-4, rtol=1e-3):
        return model, False
    return candidate, True


def _probe_onnx(model: onnx.ModelProto, card: ModelCard, notes: list[str]) -> tuple[int, ...]:
    from optimize.onnx_model import run_onnx

    height, width = card.size.padded(*PROBE_SIZE)
    x = np.random.default_rng(0).standard_normal((card.batch or 1, 3, height, width)).astype(np.float32)
    y = run_onnx(model, x, batch=card.batch or 1, label=f"model on a {height}x{width} probe input")
    notes.extend(_range_notes(y, card))
    return _check_result_shape(tuple(y.shape), (height, width))
