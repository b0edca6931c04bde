"""ONNX -> simplified ONNX with onnxsim, dynamic dims kept, outputs verified unchanged."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from optimize.artifacts import derived_path
from optimize.deps import require
from optimize.errors import MoptError
from optimize.export import verify_shapes
from optimize.fileio import atomic_output
from optimize.onnx_model import card_of_model, load_onnx, metadata_of, set_metadata

SIMPLIFY_ATOL = 1e-5  # constant folding reorders float math slightly; anything larger is a real change
VERIFY_SHAPES = ((1, 3, 161, 227), (2, 3, 96, 128))


@dataclass
class SimplifyResult:
    path: Path
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    max_abs: float


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def dynamic_dims(model: onnx.ModelProto) -> dict[str, list[str | int]]:
    """Each graph input/output's dims: symbolic names for dynamic dims, ints for fixed ones."""
    dims = {}
    for value in [*model.graph.input, *model.graph.output]:
        shape = value.type.tensor_type.shape.dim
        dims[value.name] = [d.dim_param if d.dim_param else d.dim_value for d in shape]
    return dims


def max_abs_between(a: str | Path, b: str | Path, shapes: tuple[tuple[int, ...], ...]) -> float:
    """Largest |difference| between two ONNX models in ONNX Runtime (CPU) on random inputs."""
    import onnxruntime as ort

    sa = ort.InferenceSession(str(a), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    worst = 0.0
    name_a, name_b = sa.get_inputs()[0].name, sb.get_inputs()[0].name
    for shape in shapes:
        x = rng.standard_normal(shape).astype(np.float32)
        worst = max(worst, float(np.abs(sa.run(None, {name_a: x})[0] - sb.run(None, {name_b: x})[0]).max()))
    return worst


def simplified_onnx_from_onnx(onnx_path: str | Path, output: str | Path | None = None) -> SimplifyResult:
    """Simplify with onnxsim and prove the outputs did not change.

    Args:
        onnx_path: the exported FP32 model.
        output: destination; defaults to ``<name>.sim.onnx`` beside the input.

    Raises:
        MoptError: onnxsim fails or cannot prove the result equivalent, a dynamic dim became fixed, or the
            outputs moved by more than ``SIMPLIFY_ATOL``. Nothing is written then: a failed simplification
            is reported, never replaced by a copy of the input.
    """
    onnxsim = require("onnxsim")
    onnx_path = Path(onnx_path)
    output = Path(output) if output else derived_path(onnx_path, "sim")
    if output.resolve() == onnx_path.resolve():
        raise MoptError(f"output {output} is the input file; choose another -o")
    model = load_onnx(onnx_path)
    before_dims = dynamic_dims(model)
    try:
        # No input shapes are given, so onnxsim keeps the symbolic batch/height/width dims.
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as exc:  # onnxsim surfaces C++ (onnxruntime/onnx optimizer) errors as many types
        raise MoptError(
            f"onnxsim failed on {onnx_path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if not ok:
        raise MoptError(
            f"onnxsim could not validate the simplified model of {onnx_path}; keep using the unsimplified one"
        )
    after_dims = dynamic_dims(simplified)
    if after_dims != before_dims:
        raise MoptError(
            f"simplification changed the model's dims {before_dims} -> {after_dims}; keep the unsimplified one"
        )
    set_metadata(simplified, {**metadata_of(model), "mopt.simplified": "onnxsim"})
    card = card_of_model(model, onnx_path)
    with atomic_output(output) as tmp:
        onnx.save(simplified, str(tmp))
        max_abs = max_abs_between(onnx_path, tmp, verify_shapes(card.size, card.batch, VERIFY_SHAPES))
        if max_abs > SIMPLIFY_ATOL:
            raise MoptError(
                f"simplified model differs from {onnx_path} by {max_abs:.2e} (> {SIMPLIFY_ATOL:.0e}); not written"
            )
    return SimplifyResult(
        output,
        len(model.graph.node),
        len(simplified.graph.node),
        op_histogram(model),
        op_histogram(simplified),
        max_abs,
    )
