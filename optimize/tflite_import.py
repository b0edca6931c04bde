""".tflite -> mopt checkpoint for MediaPipe's selfie segmentation, read with the pure-python ``tflite`` parser.

No TensorFlow and no interpreter: the flatbuffer is parsed, checked against what the PyTorch port
(:mod:`architectures.mediapipe_selfie`) computes, and its FP16 weights are dequantized onto the port.

The check is strict on purpose: a graph passes only if its operator histogram, its wiring (which operator
feeds which), its input/output shapes, every weighted layer's kind, weight shape, stride, padding and output
shape, the resize mode, the pooling windows and the custom transposed convolution's options are exactly what
the port implements. Anything else
would be a different model that the port would silently compute wrongly.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from architectures import create_model
from optimize.checkpoint import Normalization, save_checkpoint
from optimize.errors import MoptError
from optimize.fileio import file_sha256

#: The preprocessing the graph expects: RGB scaled to [0, 1] (mopt computes ``(rgb / 255 - mean) / std``).
UNIT_RANGE = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
ATTRIBUTION = "MediaPipe selfie segmentation, Copyright Google LLC, Apache License 2.0"
TRANSPOSE_CONV_OP = "Convolution2DTransposeBias"
# Native input size (H, W) -> the registered port. Both graphs share one architecture; the size tells them apart.
VARIANTS = {(256, 256): "mediapipe-selfie", (144, 256): "mediapipe-selfie-landscape"}
# Compute operators of the graph. The global pool is AVERAGE_POOL_2D in the portrait graph, MEAN in the
# landscape one; DEQUANTIZE (FP16 weights -> FP32) is not counted because FP32 weights need none.
EXPECTED_OPS = {
    "CONV_2D": 43,
    "DEPTHWISE_CONV_2D": 11,
    "HARD_SWISH": 11,
    "RELU": 22,
    "global pool": 10,
    "MUL": 10,
    "ADD": 14,
    "LOGISTIC": 11,
    "RESIZE_BILINEAR": 3,
    TRANSPOSE_CONV_OP: 1,
}
_POOL_OPS = ("AVERAGE_POOL_2D", "MEAN")
# sha256 of both graphs' wiring (see _wiring): which operator feeds which, pools named alike, ADD/MUL inputs
# unordered. Operator counts and shapes alone would let a graph with rerouted skips or residuals through.
WIRING_SHA256 = "623c6273f3661bf0a12d783acaed6966fe9465ac3e24b91eedfcc8fbbc9cb9d6"
_FLOAT_TYPES = {"FLOAT32": "<f4", "FLOAT16": "<f2"}
# TfLitePadding in the custom op's C struct options (1-based, unlike the schema's Padding enum).
_C_PADDING_SAME = 1


@dataclass
class TFLiteImport:
    """The port with the graph's weights loaded, and where they came from."""

    model: nn.Module
    arch: str
    native_size: tuple[int, int]
    source: str
    sha256: str
    description: str
    extra: dict[str, Any] = field(default_factory=dict)


def _tflite():
    try:
        import tflite
    except ImportError as exc:
        raise MoptError(f"the tflite flatbuffer parser is not installed ({exc}): pip install mopt") from exc
    return tflite


def _enum_names(enum_class: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


class _Graph:
    """The parts of a TFLite flatbuffer the port needs, with readable operator and tensor accessors."""

    def __init__(self, data: bytes, path: Path) -> None:
        tflite = _tflite()
        self.tflite, self.data, self.path = tflite, data, path
        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise MoptError(f"{path} has {self.model.SubgraphsLength()} subgraphs; the selfie graph has exactly 1")
        self.graph = self.model.Subgraphs(0)
        builtin = _enum_names(tflite.BuiltinOperator)
        self.type_names = _enum_names(tflite.TensorType)
        self.opcodes: list[str] = []
        for i in range(self.model.OperatorCodesLength()):
            code = self.model.OperatorCodes(i)
            # Schema v3a moved codes above 127 to builtin_code; old files only fill deprecated_builtin_code.
            number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = builtin.get(number, f"builtin {number}")
            self.opcodes.append(code.CustomCode().decode("utf-8", "replace") if name == "CUSTOM" else name)
        self.ops = [self.graph.Operators(i) for i in range(self.graph.OperatorsLength())]
        self.producer = {int(t): op for op in self.ops for t in op.OutputsAsNumpy()}

    def op_name(self, op: Any) -> str:
        return self.opcodes[op.OpcodeIndex()]

    def shape(self, tensor: int) -> tuple[int, ...]:
        t = self.graph.Tensors(tensor)
        return tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()

    def type_name(self, tensor: int) -> str:
        return self.type_names.get(self.graph.Tensors(tensor).Type(), "unknown")

    def tensor_name(self, tensor: int) -> str:
        return self.graph.Tensors(tensor).Name().decode("utf-8", "replace")

    def constant(self, tensor: int) -> np.ndarray:
        """A constant tensor as float32, following a DEQUANTIZE (FP16 -> FP32) back to its stored buffer."""
        producer = self.producer.get(tensor)
        if producer is not None:
            if self.op_name(producer) != "DEQUANTIZE":
                raise MoptError(
                    f"{self.path}: weight tensor {self.tensor_name(tensor)!r} is computed by "
                    f"{self.op_name(producer)}, not stored; this is not the selfie segmentation graph"
                )
            tensor = int(producer.InputsAsNumpy()[0])
        kind = self.type_name(tensor)
        if kind not in _FLOAT_TYPES:
            raise MoptError(
                f"{self.path}: weight tensor {self.tensor_name(tensor)!r} is {kind}; only FLOAT32/FLOAT16 weights "
                "are supported (an integer-quantized graph is a different model)"
            )
        raw = self._buffer_bytes(self.graph.Tensors(tensor).Buffer())
        shape = self.shape(tensor)
        itemsize = np.dtype(_FLOAT_TYPES[kind]).itemsize
        if len(raw) != int(np.prod(shape)) * itemsize:
            raise MoptError(
                f"{self.path}: weight {self.tensor_name(tensor)!r} has {len(raw)} bytes for shape {list(shape)} "
                f"{kind}; the file is truncated or corrupt"
            )
        # FP16 -> FP32 is exact: this is what the graph's DEQUANTIZE computes.
        return np.frombuffer(raw, dtype=_FLOAT_TYPES[kind]).astype(np.float32).reshape(shape)

    def int_constant(self, tensor: int) -> np.ndarray:
        """A stored INT32 constant (resize sizes, reduction axes)."""
        if self.type_name(tensor) != "INT32":
            raise MoptError(f"{self.path}: tensor {self.tensor_name(tensor)!r} is {self.type_name(tensor)}, not INT32")
        raw = self._buffer_bytes(self.graph.Tensors(tensor).Buffer())
        if len(raw) != int(np.prod(self.shape(tensor))) * 4:
            raise MoptError(f"{self.path}: constant {self.tensor_name(tensor)!r} is truncated or corrupt")
        return np.frombuffer(raw, dtype="<i4").reshape(self.shape(tensor))

    def _buffer_bytes(self, index: int) -> bytes:
        buffer = self.model.Buffers(index)
        offset, size = int(buffer.Offset()), int(buffer.Size())
        if offset > 1:  # files over 2 GB keep buffers after the flatbuffer, addressed by offset and size
            if offset + size > len(self.data):
                raise MoptError(f"{self.path}: buffer {index} lies beyond the end of the file; it is truncated")
            return self.data[offset : offset + size]
        if buffer.DataLength() == 0:
            return b""
        return buffer.DataAsNumpy().tobytes()

    def options(self, op: Any, table: type) -> Any:
        """The operator's builtin options as an instance of ``table`` (e.g. ``tflite.Conv2DOptions``)."""
        raw = op.BuiltinOptions()
        if raw is None:
            raise MoptError(f"{self.path}: a {self.op_name(op)} operator has no options; the file is corrupt")
        options = table()
        options.Init(raw.Bytes, raw.Pos)
        return options


def _read_graph(path: Path) -> _Graph:
    if not path.is_file():
        raise MoptError(f"TFLite file {path} does not exist; give the path to a .tflite file")
    data = path.read_bytes()
    # Bytes 4..8 of a TFLite flatbuffer hold its file identifier.
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise MoptError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier); give a .tflite model file")
    try:
        return _Graph(data, path)
    except MoptError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError, AttributeError) as exc:
        # The generated accessors read offsets straight from the bytes: a cut file fails in many ways.
        raise MoptError(f"{path} is a truncated or corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from exc


def _op_histogram(graph: _Graph) -> Counter:
    names = Counter(graph.op_name(op) for op in graph.ops)
    names.pop("DEQUANTIZE", None)
    pools = sum(names.pop(p, 0) for p in _POOL_OPS)
    if pools:
        names["global pool"] = pools
    return names


def _check_structure(graph: _Graph) -> tuple[int, int]:
    """Op histogram, input and output of the graph; returns the native (H, W)."""
    found = _op_histogram(graph)
    if found != Counter(EXPECTED_OPS):
        diff = sorted(
            f"{k} {found.get(k, 0)} (expected {EXPECTED_OPS.get(k, 0)})"
            for k in set(found) | set(EXPECTED_OPS)
            if found.get(k, 0) != EXPECTED_OPS.get(k, 0)
        )
        raise MoptError(
            f"{graph.path} is not MediaPipe's selfie segmentation graph: operator counts differ: {'; '.join(diff)}"
        )
    inputs, outputs = list(graph.graph.InputsAsNumpy()), list(graph.graph.OutputsAsNumpy())
    if len(inputs) != 1 or len(outputs) != 1:
        raise MoptError(
            f"{graph.path} has {len(inputs)} inputs and {len(outputs)} outputs; the selfie graph has 1 and 1"
        )
    in_shape, out_shape = graph.shape(int(inputs[0])), graph.shape(int(outputs[0]))
    native = in_shape[1:3] if len(in_shape) == 4 else ()
    if native not in VARIANTS or in_shape[0] != 1 or in_shape[3] != 3 or out_shape != (1, *native, 1):
        sizes = ", ".join(f"1x{h}x{w}x3" for h, w in VARIANTS)
        raise MoptError(
            f"{graph.path} takes {list(in_shape)} and returns {list(out_shape)}; the selfie graphs take {sizes} "
            "(NHWC) and return one channel of the same size"
        )
    if graph.type_name(int(inputs[0])) != "FLOAT32":
        raise MoptError(f"{graph.path} has a {graph.type_name(int(inputs[0]))} input; the selfie graph takes FLOAT32")
    return native  # type: ignore[return-value]


def _wiring(graph: _Graph) -> str:
    """Every compute operator with the positions of the operators (or the graph input) that feed it.

    DEQUANTIZE is skipped (it only unpacks FP16 weights) and constant inputs are left out, so the portrait
    graph (AVERAGE_POOL_2D) and the landscape one (MEAN with an axes constant) have the same wiring.
    """
    compute = [op for op in graph.ops if graph.op_name(op) != "DEQUANTIZE"]
    producer = {int(t): i for i, op in enumerate(compute) for t in op.OutputsAsNumpy()}
    graph_input = int(graph.graph.InputsAsNumpy()[0])
    lines = []
    for op in compute:
        name = graph.op_name(op)
        sources = [producer[int(t)] for t in op.InputsAsNumpy() if int(t) in producer]
        if name in ("ADD", "MUL"):
            sources.sort()  # commutative: an exporter may list either operand first
        reads_input = any(int(t) == graph_input for t in op.InputsAsNumpy())
        pool = "global pool" if name in _POOL_OPS else name
        lines.append(f"{pool}({'input,' if reads_input else ''}{','.join(map(str, sources))})")
    output = int(graph.graph.OutputsAsNumpy()[0])
    lines.append(f"output({producer.get(output, -1)})")
    return ";".join(lines)


def _check_wiring(graph: _Graph) -> None:
    if hashlib.sha256(_wiring(graph).encode()).hexdigest() != WIRING_SHA256:
        raise MoptError(
            f"{graph.path} has the selfie graph's operators but wired differently (another skip, residual or "
            "gate connection); this is another model"
        )


def _check_non_weight_ops(graph: _Graph) -> None:
    """Resize mode, full-window pooling and no fused activations: the semantics the port hard-codes."""
    t = graph.tflite
    for op in graph.ops:
        name = graph.op_name(op)
        in_shape = graph.shape(int(op.InputsAsNumpy()[0]))
        if name == "RESIZE_BILINEAR":
            o = graph.options(op, t.ResizeBilinearOptions)
            if o.AlignCorners() or not o.HalfPixelCenters():
                raise MoptError(
                    f"{graph.path}: RESIZE_BILINEAR has align_corners={bool(o.AlignCorners())}, "
                    f"half_pixel_centers={bool(o.HalfPixelCenters())}; the selfie graph uses False/True"
                )
        elif name == "AVERAGE_POOL_2D":
            o = graph.options(op, t.Pool2DOptions)
            if (o.FilterHeight(), o.FilterWidth()) != in_shape[1:3] or o.Padding() != t.Padding.VALID:
                raise MoptError(
                    f"{graph.path}: AVERAGE_POOL_2D with a {o.FilterHeight()}x{o.FilterWidth()} window over "
                    f"{in_shape[1]}x{in_shape[2]}; the selfie graph pools each whole feature map"
                )
        elif name == "MEAN":
            axes = sorted(int(a) for a in graph.int_constant(int(op.InputsAsNumpy()[1])).ravel())
            keep = graph.options(op, t.ReducerOptions).KeepDims()
            if axes != [1, 2] or not keep:
                raise MoptError(
                    f"{graph.path}: MEAN over axes {axes} (keep_dims={keep}); the selfie graph averages H and W"
                )
        if name in ("ADD", "MUL"):
            o = graph.options(op, t.AddOptions if name == "ADD" else t.MulOptions)
            if o.FusedActivationFunction() != t.ActivationFunctionType.NONE:
                raise MoptError(f"{graph.path}: {name} with a fused activation; the selfie graph has none")


def _check_layer(graph: _Graph, op: Any, layer: nn.Module, index: int) -> None:
    """Stride, padding, fused activation and dilation of one weighted operator against the port's layer."""
    t = graph.tflite
    name = graph.op_name(op)
    where = f"{graph.path}: weighted operator {index} ({name}, {graph.tensor_name(int(op.OutputsAsNumpy()[0]))!r})"
    if name == TRANSPOSE_CONV_OP:
        raw = op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else b""
        if len(raw) != 12:
            raise MoptError(f"{where} has {len(raw)} bytes of options; MediaPipe's op stores 12 (padding, strides)")
        padding, stride_w, stride_h = struct.unpack("<3i", raw)
        if padding != _C_PADDING_SAME or (stride_h, stride_w) != tuple(layer.stride):
            raise MoptError(f"{where} has padding {padding} and strides {stride_h}x{stride_w}; the port has SAME, 2x2")
        return
    o = graph.options(op, t.Conv2DOptions if name == "CONV_2D" else t.DepthwiseConv2DOptions)
    kernel = layer.kernel_size[0]
    stride = (o.StrideH(), o.StrideW())
    if stride != tuple(layer.stride):
        raise MoptError(f"{where} has stride {stride}; the selfie graph has {tuple(layer.stride)} there")
    if kernel > 1 and o.Padding() != t.Padding.SAME:
        raise MoptError(f"{where} uses VALID padding; the selfie graph pads SAME")
    if o.FusedActivationFunction() != t.ActivationFunctionType.NONE:
        raise MoptError(f"{where} has a fused activation; the selfie graph has separate activation operators")
    if (o.DilationHFactor(), o.DilationWFactor()) != (1, 1):
        raise MoptError(f"{where} is dilated; the selfie graph has no dilation")
    if name == "DEPTHWISE_CONV_2D" and o.DepthMultiplier() not in (0, 1):
        raise MoptError(f"{where} has depth multiplier {o.DepthMultiplier()}; the selfie graph has 1")


def _torch_weight(graph: _Graph, op: Any, layer: nn.Module) -> torch.Tensor:
    """The operator's weights in the port's layout."""
    kernel = graph.constant(int(op.InputsAsNumpy()[1]))
    name = graph.op_name(op)
    if name == "CONV_2D":
        w = kernel.transpose(0, 3, 1, 2)  # OHWI -> OIHW
    elif name == "DEPTHWISE_CONV_2D":
        w = kernel.transpose(3, 0, 1, 2)  # 1,H,W,C -> C,1,H,W
    else:
        # MediaPipe's kernel: out[y*s + fy, x*s + fx, o] += in[y, x, i] * w[o, fy, fx, i], no spatial flip,
        # which is ConvTranspose2d's definition with its weight laid out as I,O,H,W.
        w = kernel.transpose(3, 0, 1, 2)  # OHWI -> IOHW
    if tuple(w.shape) != tuple(layer.weight.shape):
        raise MoptError(
            f"{graph.path}: {name} {graph.tensor_name(int(op.OutputsAsNumpy()[0]))!r} has weights "
            f"{list(kernel.shape)}; the selfie graph has {list(layer.weight.shape)} (in PyTorch layout) there"
        )
    return torch.from_numpy(np.ascontiguousarray(w))


def _output_shapes(model: nn.Module, layers: list[nn.Module], native: tuple[int, int]) -> list[tuple[int, ...]]:
    """Each weighted layer's output at the native size, NHWC, to compare with the graph's tensor shapes."""
    shapes: list[tuple[int, ...]] = []
    # The port runs each decoder stage's 1x1 ``up`` conv before the resize the graph runs first (they commute):
    # the graph's tensor there has the skip's H x W, which the stage's pre-hook records before ``up`` runs.
    skip_size: dict[int, tuple[int, int]] = {}
    stages = {id(stage.up): stage for stage in getattr(model, "decoder", [])}

    def record(layer: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        n, c, h, w = out.shape
        shapes.append((n, c, *skip_size.get(id(layer), (h, w))))

    hooks = [m.register_forward_hook(record) for m in layers]
    for up, stage in stages.items():
        hooks.append(
            stage.register_forward_pre_hook(
                lambda _m, inputs, up=up: skip_size.__setitem__(up, tuple(inputs[1].shape[-2:]))
            )
        )
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, *native))
    finally:
        for hook in hooks:
            hook.remove()
    # Hooks fire in execution order, which layers_in_graph_order follows.
    return [(n, h, w, c) for n, c, h, w in shapes]


def model_from_tflite(tflite_path: str | Path) -> TFLiteImport:
    """Build the PyTorch port of a MediaPipe selfie segmentation ``.tflite`` with its weights.

    Args:
        tflite_path: ``selfie_segmentation.tflite`` (portrait, 256x256) or
            ``selfie_segmentation_landscape.tflite`` (144x256) from MediaPipe.

    Raises:
        MoptError: the file is missing, not a TFLite flatbuffer, truncated, or holds another graph.
    """
    path = Path(tflite_path)
    graph = _read_graph(path)
    try:
        native = _check_structure(graph)
        _check_wiring(graph)
        _check_non_weight_ops(graph)
        arch = VARIANTS[native]
        model = create_model(arch)
        layers = model.layers_in_graph_order()
        weighted = [op for op in graph.ops if graph.op_name(op) in ("CONV_2D", "DEPTHWISE_CONV_2D", TRANSPOSE_CONV_OP)]
        expected_shapes = _output_shapes(model, layers, native)
        state: dict[str, torch.Tensor] = {}
        names = {id(m): n for n, m in model.named_modules()}
        for index, (op, layer, expected) in enumerate(zip(weighted, layers, expected_shapes)):
            kind = graph.op_name(op)
            want = _layer_kind(layer)
            if kind != want:
                raise MoptError(
                    f"{graph.path}: weighted operator {index} is {kind}, the selfie graph has {want} there; "
                    "this is another graph"
                )
            _check_layer(graph, op, layer, index)
            got = graph.shape(int(op.OutputsAsNumpy()[0]))
            if got != expected:
                raise MoptError(
                    f"{graph.path}: {kind} {graph.tensor_name(int(op.OutputsAsNumpy()[0]))!r} outputs {list(got)}; "
                    f"the selfie graph outputs {list(expected)} there (NHWC)"
                )
            bias = graph.constant(int(op.InputsAsNumpy()[2])) if op.InputsLength() > 2 else None
            if bias is None or bias.shape != tuple(layer.bias.shape):
                raise MoptError(f"{graph.path}: {kind} operator {index} has no bias of shape {list(layer.bias.shape)}")
            state[f"{names[id(layer)]}.weight"] = _torch_weight(graph, op, layer)
            state[f"{names[id(layer)]}.bias"] = torch.from_numpy(bias.copy())
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError, AttributeError) as exc:
        raise MoptError(f"{path} is a truncated or corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})") from exc
    model.load_state_dict(state, strict=True)
    model.eval()
    description = (graph.model.Description() or b"").decode("utf-8", "replace")
    return TFLiteImport(model, arch, native, path.name, file_sha256(path), description)


def _layer_kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.ConvTranspose2d):
        return TRANSPOSE_CONV_OP
    return "DEPTHWISE_CONV_2D" if layer.groups > 1 else "CONV_2D"


def checkpoint_from_tflite(tflite_path: str | Path, output_path: str | Path) -> Path:
    """Convert a MediaPipe selfie segmentation ``.tflite`` into a mopt checkpoint.

    The variant (portrait ``mediapipe-selfie`` or landscape ``mediapipe-selfie-landscape``) is read from the
    graph's input size. The checkpoint's normalization is mean 0 / std 1, i.e. RGB in [0, 1], which is what
    the graph takes; ``extra`` records the source file, its sha256 and the attribution.

    Args:
        tflite_path: the ``.tflite`` file.
        output_path: a ``.pth`` or ``.safetensors`` destination, written atomically.

    Returns:
        ``output_path``.

    Raises:
        MoptError: the file is missing, not a TFLite flatbuffer, truncated, or holds another graph; nothing is
            written then.
    """
    imported = model_from_tflite(tflite_path)
    extra = {
        "source": {
            "file": imported.source,
            "sha256": imported.sha256,
            "graph_description": imported.description,
            "format": "tflite",
        },
        "attribution": ATTRIBUTION,
        "license": "Apache-2.0",
        "native_size": list(imported.native_size),
        "converted_by": "optimize.tflite_import.checkpoint_from_tflite",
    }
    return save_checkpoint(imported.model, output_path, normalization=UNIT_RANGE, extra=extra)


BUNDLED_DIR = Path(__file__).resolve().parents[1] / "third_party" / "mediapipe"
BUNDLED_FILES = {
    "mediapipe-selfie": "selfie_segmentation.tflite",
    "mediapipe-selfie-landscape": "selfie_segmentation_landscape.tflite",
}


def bundled_tflite(arch: str = "mediapipe-selfie") -> Path:
    """The original MediaPipe ``.tflite`` committed under ``third_party/mediapipe/`` for ``arch``.

    Raises:
        MoptError: ``arch`` is not a selfie variant, or the file is not there (a wheel install has no
            ``third_party/``: pass the path of a ``.tflite`` instead).
    """
    if arch not in BUNDLED_FILES:
        raise MoptError(f"no bundled .tflite for {arch!r}; choose one of: {', '.join(BUNDLED_FILES)}")
    path = BUNDLED_DIR / BUNDLED_FILES[arch]
    if not path.is_file():
        raise MoptError(f"the bundled {path.name} is not at {path} (it ships in a clone only); give a .tflite path")
    return path


def _feature_size(n: int, stride: int) -> int:
    """Size of the stride-``stride`` feature map for an input of ``n`` pixels (repeated SAME stride-2 halving)."""
    while stride > 1:
        n, stride = -(-n // 2), stride // 2
    return n


def tflite_for_size(tflite_path: str | Path, height: int, width: int) -> bytes:
    """The selfie ``.tflite`` with its size-dependent constants re-set for a ``height x width`` input.

    The frozen graph bakes its native size into three kinds of constants: the RESIZE_BILINEAR target sizes
    and, in the portrait graph, the AVERAGE_POOL_2D windows (whole feature maps). This rewrites those
    int32 values in place (same byte length, nothing else touched), so that LiteRT, after
    ``resize_tensor_input(..., [N, height, width, 3])``, runs the network itself at another size: each
    resize goes to its skip's size and each pool covers its whole map, which is what the PyTorch port does.
    Used to check the port away from the native size and to benchmark LiteRT there.

    Raises:
        MoptError: the file is not the selfie graph, or the size is not positive.
    """
    if height < 1 or width < 1:
        raise MoptError(f"size {height}x{width} must be positive")
    path = Path(tflite_path)
    graph = _read_graph(path)
    native = _check_structure(graph)
    data = bytearray(graph.data)
    for op in graph.ops:
        name = graph.op_name(op)
        if name == "RESIZE_BILINEAR":
            out = graph.shape(int(op.OutputsAsNumpy()[0]))
            target = (_feature_size(height, native[0] // out[1]), _feature_size(width, native[1] // out[2]))
            size_tensor = graph.graph.Tensors(int(op.InputsAsNumpy()[1]))
            buffer = graph.model.Buffers(size_tensor.Buffer())
            start = buffer._tab.Vector(buffer._tab.Offset(4))  # first byte of the buffer's data vector
            struct.pack_into("<2i", data, start, *target)
        elif name == "AVERAGE_POOL_2D":
            shape = graph.shape(int(op.InputsAsNumpy()[0]))
            h, w = _feature_size(height, native[0] // shape[1]), _feature_size(width, native[1] // shape[2])
            options = graph.options(op, graph.tflite.Pool2DOptions)
            # Pool2DOptions vtable slots: stride_w 6, stride_h 8, filter_width 10, filter_height 12.
            for slot, value in ((6, w), (8, h), (10, w), (12, h)):
                offset = options._tab.Offset(slot)
                if not offset:
                    raise MoptError(f"{path}: an AVERAGE_POOL_2D stores no window size; cannot re-size the graph")
                struct.pack_into("<i", data, options._tab.Pos + offset, value)
    return bytes(data)
