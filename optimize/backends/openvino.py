"""OpenVINO backends: any mopt ONNX (FP32, FP16 graph, INT8 Q/DQ) compiled for the CPU by OpenVINO Runtime.

OpenVINO reads the ONNX file itself (``Core.read_model``), so the model is exactly what ONNX Runtime runs: the
INT8 Q/DQ and FP16 graphs are read as they are. The CPU plugin executes in the precision its
``INFERENCE_PRECISION_HINT`` says; mopt pins it to ``f32`` for the ``openvino`` backend, because on CPUs with AMX
OpenVINO would otherwise default to bf16 and an "FP32" result would not be FP32. ``openvino-bf16`` asks for bf16
on CPUs that have it (``OPTIMIZATION_CAPABILITIES`` lists ``BF16``) and says why not on the others.

The mopt ONNX has a dynamic batch, height and width. The CPU plugin runs a dynamic model at any shape, but
markedly slower than one compiled for the shape it gets (1.5-2x on the MediaPipe selfie model: its kernels and
memory plan are chosen per call), while compiling a static copy costs about what compiling the model took (a
fraction of a second to a second here). So the backend compiles the dynamic model once and, per input shape,
rents before it buys: a shape runs on the dynamic compilation until its calls there have taken as long as a
compilation (``static_after_s``), then gets its own static one; the last few are kept (``static_shapes``). A
matte job's small size buckets never pay a compilation they would not earn back; a long run of one shape, and
every timed run (:meth:`OpenVinoBackend.time_inference` measures the steady state), runs static.

With the ``THROUGHPUT`` hint OpenVINO splits the CPU into streams that each serve one request; one synchronous
request would use one stream only, so a batch is split across the streams' requests and run in parallel.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections import OrderedDict
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
STATIC_SHAPES = 4  # static compilations kept per backend: a matte job's buckets, bench's batch x size
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
            ``THROUGHPUT`` (several streams; a batch is split across them and run in parallel).
        keep_fp32: ONNX node names computed in FP32 even under a bf16/fp16 ``inference_precision``.
        static_shapes: how many per-shape static compilations to keep (least recently used dropped first);
            0 runs every shape on the one dynamic compilation.
        static_after_s: seconds of calls at one shape after which it gets a static compilation; by default the
            time the dynamic compilation took.
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
        static_shapes: int = STATIC_SHAPES,
        static_after_s: float | None = None,
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
        if static_shapes < 0:
            raise MoptError(f"static_shapes must be 0 (off) or more, got {static_shapes}")
        self._config: dict[str, Any] = {
            "PERFORMANCE_HINT": performance_hint,
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[inference_precision][0],
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._path = label  # how messages name the model (a file, or the in-memory model)
        self._model = model
        began = time.perf_counter()
        self.compiled, self._requests = self._compile(model)
        self.static_after_s = time.perf_counter() - began if static_after_s is None else static_after_s
        self._dynamic_s: dict[tuple[int, ...], float] = {}  # per shape: time its calls spent on the dynamic model
        self.request = self._requests[0]
        # Only a model with dynamic dims gains from a static copy; one already static runs as it is.
        self.static_shapes = static_shapes if model.inputs[0].get_partial_shape().is_dynamic else 0
        self._by_shape: OrderedDict[tuple[int, ...], tuple[Any, list[Any]]] = OrderedDict()
        self.input_name = model.inputs[0].get_any_name()
        self.output_name = model.outputs[0].get_any_name()
        self.inference_precision = inference_precision
        self.performance_hint = performance_hint
        if precision is None:
            precision = _model_precision(onnx_path) if in_memory else onnx_precision(onnx_path)
        # A bf16/fp16 run of an FP32 file is judged as that precision; an FP16/INT8 file keeps its own.
        self.precision = inference_precision if inference_precision != "fp32" else precision
        self.name = name or f"openvino-cpu-{self.precision}"

    def _compile(self, model: Any) -> tuple[Any, list[Any]]:
        """Compile ``model`` with this backend's config; its requests, one per stream the hint asks for."""
        try:
            compiled = _core().compile_model(model, DEVICE, self._config)
        except RuntimeError as exc:
            raise MoptError(
                f"OpenVINO cannot compile {self._path} for the CPU: {str(exc).strip().splitlines()[0]}"
            ) from exc
        count = 1
        if self._config["PERFORMANCE_HINT"] == "THROUGHPUT":
            count = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        return compiled, [compiled.create_infer_request() for _ in range(count)]

    def _requests_for(self, shape: tuple[int, ...], prepare: bool = False) -> list[Any]:
        """The requests to run ``shape`` on: its static compilation, or the dynamic one until it has earned one.

        ``prepare`` compiles the static copy now, whatever the shape has cost so far.
        """
        if not self.static_shapes:
            return self._requests
        entry = self._by_shape.get(shape)
        if entry is not None:
            self._by_shape.move_to_end(shape)
            return entry[1]
        if not prepare and self._dynamic_s.get(shape, 0.0) < self.static_after_s:
            return self._requests
        model = self._model.clone()
        try:
            model.reshape(list(shape))
        except RuntimeError as exc:  # a shape the graph cannot take (one that breaks its size rule)
            raise MoptError(
                f"OpenVINO cannot run {self._path} at input shape {list(shape)}: {str(exc).strip().splitlines()[0]}"
            ) from exc
        entry = self._compile(model)
        self._by_shape[shape] = entry
        self._dynamic_s.pop(shape, None)
        if len(self._by_shape) > self.static_shapes:
            self._by_shape.popitem(last=False)
        return entry[1]

    def _charge(self, shape: tuple[int, ...], requests: list[Any], seconds: float) -> None:
        """Count a call's time against ``shape`` when it ran on the dynamic compilation."""
        if self.static_shapes and requests is self._requests:
            self._dynamic_s[shape] = self._dynamic_s.get(shape, 0.0) + seconds

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        began = time.perf_counter()
        streams = len(self._requests)
        if streams == 1 or len(x) == 1:
            requests = self._requests_for(x.shape)
            requests[0].infer({0: x})
            # The output tensor's buffer is reused by the next call: hand out a copy.
            out = np.array(requests[0].get_output_tensor(0).data, dtype=np.float32, copy=True)
            self._charge(x.shape, requests, time.perf_counter() - began)
            return out
        # THROUGHPUT: equal chunks (the last may be smaller) on parallel requests, one per stream.
        size = -(-len(x) // streams)
        chunks = [x[i : i + size] for i in range(0, len(x), size)]
        running = []
        for index, chunk in enumerate(chunks):
            requests = self._requests_for(chunk.shape)
            requests[index].start_async({0: chunk})
            running.append((chunk.shape, requests))
        outputs = []
        for index, (_, requests) in enumerate(running):
            requests[index].wait()
            outputs.append(np.array(requests[index].get_output_tensor(0).data, dtype=np.float32, copy=True))
        elapsed = time.perf_counter() - began
        for shape, requests in running:
            self._charge(shape, requests, elapsed / len(running))
        return np.concatenate(outputs)

    def time_inference(self, batch: np.ndarray, warmup: int, iterations: int) -> list[float]:
        """Milliseconds per call in the steady state: the shapes ``batch`` runs at are compiled first."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        streams = len(self._requests)
        size = len(x) if streams == 1 else -(-len(x) // streams)
        for start in range(0, len(x), size):
            self._requests_for(x[start : start + size].shape, prepare=True)
        return super().time_inference(x, warmup, iterations)

    def close(self) -> None:
        self.request = None
        self._requests = []
        self._by_shape.clear()
        self._dynamic_s.clear()
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
