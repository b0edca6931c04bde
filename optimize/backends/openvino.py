"""OpenVINO backends: any mopt ONNX (FP32, FP16 graph, INT8 Q/DQ) compiled for the CPU by OpenVINO Runtime.

OpenVINO reads the ONNX file itself (``Core.read_model``), so the model is exactly what ONNX Runtime runs: the
INT8 Q/DQ and FP16 graphs are read as they are. The CPU plugin executes in the precision its
``INFERENCE_PRECISION_HINT`` says; mopt pins it to ``f32`` for the ``openvino`` backend, because on CPUs with AMX
OpenVINO would otherwise default to bf16 and an "FP32" result would not be FP32. ``openvino-bf16`` asks for bf16
on CPUs that have it (``OPTIMIZATION_CAPABILITIES`` lists ``BF16``) and says why not on the others.

The mopt ONNX has a dynamic batch, height and width; the CPU plugin compiles a dynamic model once and infers any
shape, so no reshape or recompilation happens when a matte job changes bucket.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from optimize.backends.base import BackendSpec, CpuBackend, InferenceBackend, ModelSources, onnx_precision
from optimize.errors import MoptError

if TYPE_CHECKING:
    import onnx

DEVICE = "CPU"
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# mopt's names for OpenVINO's inference precisions, and the capability the CPU must report for each.
INFERENCE_PRECISIONS = {"fp32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "fp16": ("f16", "FP16")}


def _openvino() -> Any:
    from optimize.deps import require

    return require("openvino")


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    """One OpenVINO ``Core`` per process: it loads the device plugins, which is the slow part of starting."""
    return _openvino().Core()


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can do (``FP32``, ``BF16``, ``INT8``, ...)."""
    return list(_core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def openvino_unavailable_reason() -> str | None:
    """Why OpenVINO cannot run here, ``None`` when it can."""
    try:
        _openvino()
    except MoptError as exc:
        return str(exc)
    return None


def inference_precision_reason(precision: str) -> str | None:
    """Why this CPU cannot run OpenVINO at ``precision`` (``fp32``, ``bf16``, ``fp16``), ``None`` when it can."""
    if precision not in INFERENCE_PRECISIONS:
        raise MoptError(
            f"unknown OpenVINO inference precision {precision!r}; choose from: {', '.join(INFERENCE_PRECISIONS)}"
        )
    reason = openvino_unavailable_reason()
    if reason:
        return reason
    capability = INFERENCE_PRECISIONS[precision][1]
    capabilities = cpu_capabilities()
    if capability not in capabilities:
        name = _core().get_property(DEVICE, "FULL_DEVICE_NAME")
        return (
            f"this CPU ({name}) has no {capability} support in OpenVINO (its capabilities: {', '.join(capabilities)})"
        )
    return None


# The IR attribute the CPU plugin reads to leave a node in its own precision under a bf16/f16 inference hint.
# It is a typed runtime attribute: the Python RTMap cannot create it, but the IR reader builds it from its text.
_KEEP_PRECISION_ATTRIBUTE = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}


def reduced_inference_precision() -> str:
    """The reduced float precision OpenVINO computes in on this CPU: ``fp16`` where it has FP16, else ``bf16``.

    Raises:
        MoptError: OpenVINO is missing, or the CPU has neither (the message names the CPU and its capabilities).
    """
    reasons = [inference_precision_reason(p) for p in ("fp16", "bf16")]
    for precision, reason in zip(("fp16", "bf16"), reasons, strict=True):
        if reason is None:
            return precision
    raise MoptError(f"OpenVINO cannot compute in FP16 or BF16 here: {reasons[1]}; use --runtime onnxruntime")


def _owners(layer: Any, names: set[str], tensor_owner: dict[str, str]) -> set[str]:
    """The ONNX nodes of ``names`` that an IR layer computes (part of).

    OpenVINO splits some ONNX nodes (a Conv with bias becomes ``<name>/WithoutBiases`` and an Add called
    ``<name>``) and renames the node producing a graph output after that output; the output tensors keep their
    ONNX names, so a layer belongs to the node whose tensor it produces, or whose name it carries.
    """
    name = layer.get("name", "")
    owners = {n for n in (name, name.rsplit("/", 1)[0]) if n in names}
    for port in layer.iterfind("output/port"):
        for tensor in (port.get("names") or "").split(","):
            owner = tensor_owner.get(tensor.strip())
            if owner in names:
                owners.add(owner)
    return owners


def openvino_model_from_onnx(
    source: str | Path | onnx.ModelProto, keep_fp32: Sequence[str] = (), label: str = ""
) -> Any:
    """Read an ONNX file (or an in-memory ONNX model) into an OpenVINO ``Model``.

    Args:
        source: the ONNX path, or a model built in memory (a reduced model of ``mopt debug precision``).
        keep_fp32: ONNX node names whose operations stay in FP32 when the model is compiled with a bf16 or f16
            inference precision hint (no effect at f32).
        label: what to call the model in messages; the path by default.

    Raises:
        MoptError: OpenVINO cannot read the model, or ``keep_fp32`` names nodes it does not have.
    """
    ov = _openvino()
    label = label or str(source)
    core = _core()
    try:
        if isinstance(source, (str, Path)):
            model = core.read_model(str(source))
        else:
            model = core.read_model(source.SerializeToString())
    except RuntimeError as exc:  # OpenVINO reports unreadable or unsupported graphs as RuntimeError
        raise MoptError(f"OpenVINO cannot read {label}: {str(exc).strip().splitlines()[0]}") from exc
    if not keep_fp32:
        return model
    import xml.etree.ElementTree as ElementTree

    import onnx

    names = set(keep_fp32)
    graph = (onnx.load(str(source), load_external_data=False) if isinstance(source, (str, Path)) else source).graph
    tensor_owner = {tensor: node.name for node in graph.node for tensor in node.output}

    with tempfile.TemporaryDirectory(prefix="mopt-ov-") as tmp:
        xml_path = Path(tmp) / "model.xml"
        # compress_to_fp16=False: the weights stay as they are; only the marked operations change.
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
        tree = ElementTree.parse(xml_path)
        found: set[str] = set()
        for layer in tree.getroot().iter("layer"):
            if layer.get("type") in ("Const", "Parameter", "Result"):
                continue
            owners = _owners(layer, names, tensor_owner)
            if not owners:
                continue
            found |= owners
            rt_info = layer.find("rt_info")
            if rt_info is None:
                rt_info = ElementTree.SubElement(layer, "rt_info")
            ElementTree.SubElement(rt_info, "attribute", _KEEP_PRECISION_ATTRIBUTE)
        missing = [n for n in keep_fp32 if n not in found]
        if missing:
            raise MoptError(
                f"OpenVINO's graph of {label} has no operations of node(s) {', '.join(missing[:3])}; "
                "name nodes of this ONNX (as `mopt debug precision` lists them)"
            )
        tree.write(xml_path)
        return core.read_model(str(xml_path))


class OpenVinoBackend(CpuBackend):
    """An ONNX file compiled by OpenVINO for the CPU.

    Args:
        onnx_path: any mopt ONNX (one input; dynamic dims are fine), or an ONNX model in memory. Its first
            output is returned, as the ONNX Runtime backend does.
        threads: ``INFERENCE_NUM_THREADS``; ``None`` lets OpenVINO use every core.
        name: label in reports; defaults to ``openvino-cpu-<precision>``.
        precision: label for the file's precision; read from its metadata by default.
        inference_precision: what the CPU computes in: ``fp32`` (default), ``bf16`` or ``fp16`` where the CPU
            has it (a MoptError says when it does not).
        performance_hint: ``LATENCY`` (one request as fast as possible, what matte and bench time) or
            ``THROUGHPUT`` (several streams for parallel requests).
        keep_fp32: ONNX node names computed in FP32 even under a bf16/fp16 ``inference_precision``.
    """

    backend = "openvino"

    def __init__(
        self,
        onnx_path: str | Path | onnx.ModelProto,
        threads: int | None = None,
        name: str | None = None,
        precision: str | None = None,
        inference_precision: str = "fp32",
        performance_hint: str = "LATENCY",
        keep_fp32: Sequence[str] = (),
    ) -> None:
        if performance_hint not in PERFORMANCE_HINTS:
            raise MoptError(
                f"unknown OpenVINO performance hint {performance_hint!r}; choose from: {', '.join(PERFORMANCE_HINTS)}"
            )
        in_memory = not isinstance(onnx_path, (str, Path))
        label = "the in-memory model" if in_memory else str(onnx_path)
        reason = inference_precision_reason(inference_precision)
        if reason:
            raise MoptError(f"OpenVINO cannot run {label} in {inference_precision}: {reason}")
        model = openvino_model_from_onnx(onnx_path, keep_fp32, label)
        if len(model.inputs) != 1:
            count = len(model.inputs)
            raise MoptError(f"{label} has {count} inputs; mopt's backends run models of one image input")
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": performance_hint,
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[inference_precision][0],
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = _core().compile_model(model, DEVICE, config)
        except RuntimeError as exc:
            raise MoptError(
                f"OpenVINO cannot compile {label} for the CPU: {str(exc).strip().splitlines()[0]}"
            ) from exc
        self.request = self.compiled.create_infer_request()
        self.input_name = model.inputs[0].get_any_name()
        self.output_name = model.outputs[0].get_any_name()
        self.inference_precision = inference_precision
        self.performance_hint = performance_hint
        if precision is None:
            precision = _model_precision(onnx_path) if in_memory else onnx_precision(onnx_path)
        # A bf16/fp16 run of an FP32 file is judged as that precision; an FP16/INT8 file keeps its own.
        self.precision = inference_precision if inference_precision != "fp32" else precision
        self.name = name or f"openvino-cpu-{self.precision}"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        # The output tensor's buffer is reused by the next call: hand out a copy.
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _model_precision(model: onnx.ModelProto) -> str:
    return {p.key: p.value for p in model.metadata_props}.get("mopt.precision", "fp32")


def run_openvino(
    model: str | Path | onnx.ModelProto,
    inputs: np.ndarray,
    batch: int = 2,
    threads: int | None = None,
    inference_precision: str = "fp32",
    keep_fp32: Sequence[str] = (),
) -> np.ndarray:
    """The result of ``inputs`` (N x 3 x H x W) from an ONNX model compiled by OpenVINO, in batches.

    The counterpart of :func:`optimize.onnx_model.run_onnx` for ``mopt debug precision --runtime openvino``.
    """
    backend = OpenVinoBackend(model, threads=threads, inference_precision=inference_precision, keep_fp32=keep_fp32)
    with backend:
        return np.concatenate([backend.infer(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


# --- registration ---------------------------------------------------------------------------------------------


def _openvino_models(sources: ModelSources) -> Iterator[InferenceBackend]:
    for path in sources.onnx:
        yield OpenVinoBackend(path, threads=sources.threads)


def _openvino_bf16_models(sources: ModelSources) -> Iterator[InferenceBackend]:
    # bf16 is a way to run an FP32 model; a graph already in FP16 or INT8 is run by `openvino` as it is.
    for path in sources.onnx:
        if onnx_precision(path) == "fp32":
            yield OpenVinoBackend(path, threads=sources.threads, inference_precision="bf16")


def _openvino_reason(sources: ModelSources) -> str | None:
    if not sources.onnx:
        return "no ONNX file given (run `mopt export` first)"
    return openvino_unavailable_reason()


def _openvino_bf16_reason(sources: ModelSources) -> str | None:
    return _openvino_reason(sources) or inference_precision_reason("bf16")


OPENVINO = BackendSpec(
    "openvino",
    "OpenVINO on the CPU, one run per ONNX file (FP32 computed in f32, FP16 graph, INT8 Q/DQ), latency hint",
    _openvino_models,
    _openvino_reason,
    count=lambda s: len(s.onnx),
)
OPENVINO_BF16 = BackendSpec(
    "openvino-bf16",
    "OpenVINO on the CPU computing the FP32 ONNX in bf16 (CPUs with BF16 support only)",
    _openvino_bf16_models,
    _openvino_bf16_reason,
    # Only by name: bf16 is a reduced precision like FP16/INT8 and needs its own recipe to meet the budget
    # (on the bundled models its worst pixels exceed compare's bf16 tolerance without one).
    default=False,
    count=lambda s: sum(onnx_precision(path) == "fp32" for path in s.onnx),
)
