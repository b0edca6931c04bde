"""FP32 ONNX -> mixed-precision FP16 ONNX with NVIDIA ModelOpt AutoCast, verified on the CPU with matte metrics.

TensorRT 11 is strongly typed: it runs each layer in the precision the ONNX graph gives it, so FP16 is
written into the graph here (inputs and outputs stay FP32, numerically sensitive nodes stay FP32) and the
engine builder compiles that graph as it is.

Verification is honest about the CPU: ONNX Runtime's CPU provider has FP16 kernels for only a few ops on
x86 and runs the rest in FP32 behind casts it inserts itself, removing the casts between neighbours. Running
the FP16 ONNX there proves it loads and runs, but hides FP16 rounding and overflow between layers. So every
conversion is also measured on an *FP16 emulation*: the same graph in FP32 arithmetic with every FP16 tensor
(weights and activations) rounded through FP16, which is what a GPU's FP16 kernels store between layers
(they accumulate in FP32). The worse of the two measurements is the one judged against the budget.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from optimize import __version__
from optimize.artifacts import derived_path
from optimize.defaults import FP16_MAD as FP16_MAD  # the FP16 acceptance budget, with FP16_MAX_ABS
from optimize.defaults import FP16_MAX_ABS as FP16_MAX_ABS
from optimize.deps import quiet_libraries, require
from optimize.errors import MoptError
from optimize.fileio import atomic_output, file_sha256
from optimize.onnx_model import image_input, io_dims, load_onnx, require_fp32_source, run_onnx, set_metadata
from optimize.verification import (
    DEFAULT_VERIFY_COUNT,
    AccuracyCheck,
    accuracy_check,
    refuse_changed_overwrite,
    verification_inputs,
    verification_record,
    worst_metrics,
)

VERIFY_BATCH = 2
_EMULATION_SUFFIX = "/mopt_fp16_emulation"


# --- FP16 graph conversion -----------------------------------------------------------------------------------


def node_exclusion_patterns(names: Sequence[str]) -> list[str]:
    """AutoCast and ModelOpt match node names as regular expressions: escape and anchor each exact name."""
    return [f"{re.escape(n)}$" for n in names]


def float_output_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes (in graph order) with a float32 output: the ones a precision change can affect."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = tensor_types(inferred)
    return [
        n.name
        for n in inferred.graph.node
        if n.op_type != "Constant" and any(types.get(o) == TensorProto.FLOAT for o in n.output if o)
    ]


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type for every typed tensor of a (shape-inferred) model."""
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]
    }
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def fp16_model_from_onnx(
    onnx_path: str | Path,
    nodes_to_keep_fp32: Sequence[str] = (),
    op_types_to_keep_fp32: Sequence[str] = (),
    reference_inputs: np.ndarray | None = None,
    autocast_rules: bool = True,
) -> onnx.ModelProto:
    """Convert an FP32 ONNX to mixed FP16/FP32 in memory with ModelOpt AutoCast (I/O kept FP32).

    Args:
        onnx_path: the FP32 model.
        nodes_to_keep_fp32: exact node names to leave in FP32 (a recipe's nodes).
        op_types_to_keep_fp32: op types to leave in FP32.
        reference_inputs: preprocessed images AutoCast runs the FP32 model on to find nodes whose values
            exceed FP16's safe range (its ``data_max`` rule); synthetic composites when None.
        autocast_rules: apply AutoCast's range rule; False converts everything not named (the debugger passes
            the rule's verdict as names instead, which skips AutoCast's reference run).
    """
    autocast = require("modelopt.onnx.autocast")
    kwargs = {}
    if not autocast_rules:
        kwargs["data_max"] = np.inf  # no reference run: only the names given and the weight-range rule decide
    if autocast_rules and reference_inputs is None:
        # AutoCast's own random data would give dynamic dims the size 1, which a U-Net cannot downsample.
        reference_inputs = verification_inputs(onnx_path)[0]
    with tempfile.TemporaryDirectory(prefix="mopt-autocast-") as tmp, quiet_libraries():
        if reference_inputs is not None and autocast_rules:
            # AutoCast reads reference data from an .npz keyed by input name.
            calibration = Path(tmp) / "reference.npz"
            input_name = image_input(load_onnx(onnx_path, load_weights=False), onnx_path).name
            np.savez(calibration, **{input_name: reference_inputs.astype(np.float32)})
            kwargs["calibration_data"] = str(calibration)
        try:
            return autocast.convert_to_mixed_precision(
                onnx_path=str(onnx_path),
                low_precision_type="fp16",
                nodes_to_exclude=node_exclusion_patterns(nodes_to_keep_fp32),
                op_types_to_exclude=list(op_types_to_keep_fp32),
                keep_io_types=True,
                providers=["cpu"],
                **kwargs,
            )
        except (ValueError, KeyError, RuntimeError, AssertionError) as exc:
            # AutoCast validates with assert/ValueError; turn its complaint into one line the user can act on.
            raise MoptError(
                f"ModelOpt AutoCast could not convert {onnx_path} to FP16: "
                f"{str(exc).splitlines()[0] if str(exc) else exc!r}"
            ) from exc


def fp32_nodes_of(fp16_model: onnx.ModelProto, candidates: Sequence[str]) -> list[str]:
    """Which of ``candidates`` (float-output nodes of the source) a converted model still runs in FP32."""
    types = tensor_types(onnx.shape_inference.infer_shapes(fp16_model))
    outputs = {n.name: [o for o in n.output if o] for n in fp16_model.graph.node}
    kept = []
    for name in candidates:
        outs = outputs.get(name, [])
        # keep_io_types renames the last node's output (it feeds a Cast to FP32), so judge by any output.
        if outs and not any(types.get(o) == TensorProto.FLOAT16 for o in outs):
            kept.append(name)
    return kept


def fp16_emulation_from_model(fp16_model: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 graph that computes what the FP16 graph computes on hardware with FP16 kernels.

    Every FP16 initializer and constant becomes FP32 with the same (FP16-representable) value, and every
    FP16 tensor a node produces is computed in FP32 and rounded through FP16 by a Cast pair, so FP16 rounding,
    overflow to Inf and underflow happen at the same tensors as on the GPU, while ONNX Runtime's CPU provider
    runs every op in FP32. Accumulation inside an op stays FP32, as in TensorRT's FP16 kernels.

    Raises:
        MoptError: the graph uses an op whose FP16 typing this emulation cannot express.
    """
    model = copy.deepcopy(fp16_model)
    types = tensor_types(onnx.shape_inference.infer_shapes(model))
    graph = model.graph
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT16:
            graph.initializer[index].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name)
            )
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
            elif attr.name in ("to", "dtype") and attr.i == TensorProto.FLOAT16 and node.op_type != "Cast":
                raise MoptError(
                    f"cannot emulate FP16 for {node.op_type} node {node.name} (it creates FP16 by attribute)"
                )
        if node.op_type == "Constant":
            nodes.append(node)
            continue
        rounded = []
        for i, out in enumerate(node.output):
            if out and types.get(out) == TensorProto.FLOAT16:
                raw = out + _EMULATION_SUFFIX
                node.output[i] = raw
                rounded.append((raw, out))
        nodes.append(node)
        for raw, out in rounded:
            if node.op_type == "Cast":  # already rounds to FP16: only bring it back to FP32
                nodes.append(onnx.helper.make_node("Cast", [raw], [out], to=TensorProto.FLOAT, name=raw + "/to_fp32"))
            else:
                half = raw + "/fp16"
                nodes.append(onnx.helper.make_node("Cast", [raw], [half], to=TensorProto.FLOAT16, name=half))
                nodes.append(onnx.helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT, name=raw + "/to_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # element types changed; ONNX Runtime re-infers them
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def ort_cpu_fp16_compute(fp16_path: str | Path) -> tuple[int, int]:
    """How many FP16 compute nodes ONNX Runtime's CPU provider really runs in FP16.

    Returns:
        ``(run_in_fp16, fp16_in_graph)``: nodes (other than Cast) with an FP16 output after ONNX Runtime's
        basic optimizations and cast insertion, and before them.
    """
    import onnxruntime as ort

    def fp16_compute(model: onnx.ModelProto) -> int:
        types = tensor_types(onnx.shape_inference.infer_shapes(model))
        return sum(
            1
            for n in model.graph.node
            if n.op_type not in ("Cast", "Constant") and any(types.get(o) == TensorProto.FLOAT16 for o in n.output if o)
        )

    with tempfile.TemporaryDirectory(prefix="mopt-ortopt-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Basic level: constant folding and cast insertion, none of the hardware-specific layout rewrites.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(fp16_path), sess_options=options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return fp16_compute(optimized), fp16_compute(onnx.load(str(fp16_path)))


@dataclass
class Fp16Result:
    """What :func:`fp16_conversion_from_onnx` wrote and how it measured.

    Attributes:
        path: the FP16 ONNX.
        kept_fp32: float nodes left in FP32 (AutoCast's range rule plus the recipe), in graph order.
        converted: float nodes converted to FP16.
        fp16_initializers: FP16 weight tensors in the written model.
        casts: Cast nodes in the written model (precision boundaries and I/O).
        ort_fp16_nodes: ``(run in FP16 by ONNX Runtime CPU, FP16 nodes in the graph)``.
        checks: the ONNX Runtime CPU measurement and the FP16-emulation measurement against the FP32 model.
        inputs: what the checks ran on.
    """

    path: Path
    kept_fp32: list[str]
    converted: int
    fp16_initializers: int
    casts: int
    ort_fp16_nodes: tuple[int, int]
    checks: list[AccuracyCheck] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)

    @property
    def worst(self) -> dict[str, float]:
        return worst_metrics(self.checks)


def fp16_checks(
    fp32_path: str | Path,
    fp16_model: onnx.ModelProto | str | Path,
    inputs: np.ndarray,
    reference: np.ndarray | None = None,
    threads: int | None = None,
) -> list[AccuracyCheck]:
    """Measure an FP16 model against the FP32 one: as ONNX Runtime CPU runs it, and as FP16 hardware would."""
    model = fp16_model if isinstance(fp16_model, onnx.ModelProto) else onnx.load(str(fp16_model))
    if reference is None:
        reference = run_onnx(fp32_path, inputs, threads=threads, label="FP32 model")
    ort_out = run_onnx(model, inputs, threads=threads, label="FP16 model")
    emulated = run_onnx(fp16_emulation_from_model(model), inputs, threads=threads, label="FP16 emulation")
    return [
        accuracy_check(reference, ort_out, "onnxruntime-cpu"),
        accuracy_check(reference, emulated, "fp16-emulation"),
    ]


def fp16_conversion_from_onnx(
    onnx_path: str | Path,
    output: str | Path | None = None,
    recipe: str | Path | None = None,
    images: str | Path | None = None,
    size: tuple[int, int] | None = None,
    count: int = DEFAULT_VERIFY_COUNT,
    max_abs: float = FP16_MAX_ABS,
    mad: float = FP16_MAD,
    threads: int | None = None,
    force: bool = False,
) -> Fp16Result:
    """Convert an FP32 ONNX to FP16 (AutoCast, I/O FP32) and prove its mattes stay within the budget.

    Args:
        onnx_path: the FP32 model (exported or simplified).
        output: destination; ``<name>.fp16.onnx`` beside the input when None.
        recipe: a ``mopt debug precision --fp16`` recipe: its nodes and op types stay in FP32.
        images: folder of images to verify on (and for AutoCast's range rule); synthetic composites when None.
        size: verification ``(height, width)``; the model's fixed size or 256 x 256 when None.
        count: verification images.
        max_abs: largest accepted |alpha difference| against the FP32 model.
        mad: largest accepted mean absolute difference.
        threads: ONNX Runtime CPU threads.
        force: replace an existing ``output`` made with other settings (another source or other FP32 nodes).

    Raises:
        MoptError: unreadable or already reduced input, a recipe that does not fit, conversion failure, a
            dynamic dim that became fixed, no FP16 compute left, mattes over the budget, or an existing output made
            with other settings (without ``force``). Nothing is written then.
    """
    from optimize.recipe import load_recipe, recipe_exclusions

    onnx_path = Path(onnx_path)
    source = load_onnx(onnx_path)
    require_fp32_source(source, onnx_path)
    output = Path(output) if output else derived_path(onnx_path, "fp16")
    if output.suffix != ".onnx":
        raise MoptError(f"output {output} must end in .onnx")
    if output.resolve() == onnx_path.resolve():
        raise MoptError(f"output {output} is the input file; choose another -o")
    keep: list[str] = []
    if recipe is not None:
        loaded = load_recipe(recipe, precision="fp16")
        keep = recipe_exclusions(
            loaded, [n.name for n in source.graph.node], {n.name: n.op_type for n in source.graph.node}
        )
    inputs, description = verification_inputs(onnx_path, images, size, count)

    converted = fp16_model_from_onnx(onnx_path, nodes_to_keep_fp32=keep, reference_inputs=inputs)
    if io_dims(converted) != io_dims(source):
        raise MoptError(
            f"FP16 conversion changed the model's I/O {io_dims(source)} -> {io_dims(converted)}; not written"
        )
    candidates = float_output_nodes(source)
    kept = fp32_nodes_of(converted, candidates)
    fp16_inits = sum(i.data_type == TensorProto.FLOAT16 for i in converted.graph.initializer)
    if len(kept) == len(candidates) or fp16_inits == 0:
        raise MoptError(
            f"FP16 conversion of {onnx_path} left every node in FP32 (the recipe or AutoCast's rules keep them all); "
            "not written"
        )
    settings = {"mopt.source_onnx_sha256": file_sha256(onnx_path), "mopt.fp16_kept_fp32": json.dumps(kept)}
    refuse_changed_overwrite(output, settings, force)
    checks = fp16_checks(onnx_path, converted, inputs, threads=threads)
    worst = worst_metrics(checks)
    if not (worst["max_abs"] <= max_abs and worst["mad"] <= mad):
        culprit = max(checks, key=lambda c: c.mad)
        raise MoptError(
            f"FP16 mattes differ from FP32 by max abs {worst['max_abs']:.2e} (budget {max_abs:.0e}), "
            f"MAD {worst['mad']:.2e} (budget {mad:.0e}) on {culprit.label} ({description['count']} "
            f"{description['images']} at {description['size']}); not written: find the nodes to keep in FP32 with "
            f"`mopt debug precision {onnx_path} --fp16 -o recipe.json`, then pass --recipe recipe.json"
        )
    meta = {p.key: p.value for p in source.metadata_props}
    set_metadata(
        converted,
        {
            **meta,
            "mopt.precision": "fp16",
            "mopt.version": __version__,
            **settings,
            "mopt.verification": json.dumps(verification_record(description, checks)),
        },
    )
    with atomic_output(output) as tmp:
        onnx.save(converted, str(tmp))
        ort_nodes = ort_cpu_fp16_compute(tmp)
    return Fp16Result(
        path=output,
        kept_fp32=kept,
        converted=len(candidates) - len(kept),
        fp16_initializers=fp16_inits,
        casts=Counter(n.op_type for n in converted.graph.node)["Cast"],
        ort_fp16_nodes=ort_nodes,
        checks=checks,
        inputs=description,
    )


def fp16_onnx_from_onnx(
    onnx_path: str | Path,
    output: str | Path | None = None,
    recipe: str | Path | None = None,
    **kwargs: Any,
) -> Path:
    """Convert an FP32 ONNX to a verified FP16 ONNX and return its path (see :func:`fp16_conversion_from_onnx`)."""
    return fp16_conversion_from_onnx(onnx_path, output, recipe, **kwargs).path
