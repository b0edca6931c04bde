"""The ONNX model and its card: load, metadata, I/O dims, run in ONNX Runtime — one module for every stage.

Export writes the card into ``mopt.card``; simplify, convert-precision, quantize, debug precision,
build-engine, compare, bench, matte, serve and deploy read it back with :func:`card_of_onnx`. An ONNX that mopt
did not write (or wrote before cards) gets a card inferred from its graph and its older metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from optimize.card import IMAGENET, ModelCard, Normalization, SizeRule, legacy_card
from optimize.errors import MoptError

CARD_KEY = "mopt.card"
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


def load_onnx(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file or raise a MoptError naming it.

    Args:
        path: the ``.onnx`` file.
        load_weights: also load external weight files (False reads only the graph and metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise MoptError(f"ONNX model {path} does not exist; export one with `mopt export CHECKPOINT`")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # protobuf's DecodeError and friends share no narrower base class
        raise MoptError(
            f"{path} is not a readable ONNX model: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from exc


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading external weights)."""
    return metadata_of(load_onnx(path, load_weights=False))


def metadata_of(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Insert or replace metadata entries in place."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        if key in existing:
            existing[key].value = value
        else:
            model.metadata_props.add(key=key, value=value)


def io_dims(model: onnx.ModelProto) -> dict[str, list[str | int]]:
    """Dims of every graph input and output: symbolic names for dynamic dims, ints for fixed ones."""
    return {
        v.name: [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs (old exporters also list initializers as graph inputs)."""
    weights = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in weights]


def image_input(model: onnx.ModelProto, source: str | Path = "model") -> onnx.ValueInfoProto:
    """The one float ``N x 3 x H x W`` image input, or a MoptError saying what the graph has instead."""
    inputs = graph_inputs(model)
    found = ", ".join(f"{v.name} {_dims_text(v)} {_type_name(v)}" for v in inputs) or "none"
    if len(inputs) != 1:
        raise MoptError(f"{source} has {len(inputs)} inputs ({found}); mopt needs one N x 3 x H x W image input")
    value = inputs[0]
    dims = value.type.tensor_type.shape.dim
    if value.type.tensor_type.elem_type not in FLOAT_TYPES or len(dims) != 4 or dims[1].dim_value not in (0, 3):
        raise MoptError(f"{source} has no float N x 3 x H x W image input (it has {found})")
    return value


def spatial_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """The model's fixed input H x W, or None when they are dynamic."""
    dims = graph_inputs(model)[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise MoptError(f"model input has {len(dims)} dims; mopt models take N x 3 x H x W images")
    h, w = dims[2], dims[3]
    if h.dim_value > 0 and w.dim_value > 0:
        return h.dim_value, w.dim_value
    return None


def onnx_precision(path: str | Path) -> str:
    """The precision mopt recorded in an ONNX file's metadata (``mopt.precision``), ``fp32`` if none."""
    return read_metadata(path).get("mopt.precision", "fp32")


def require_fp32_source(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a model that is already reduced: converting twice compounds the error and hides it."""
    precision = metadata_of(model).get("mopt.precision", "fp32")
    if precision != "fp32":
        raise MoptError(f"{path} is already {precision} (mopt.precision); convert the FP32 model instead")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise MoptError(f"{path} already has Q/DQ nodes; convert the FP32 model instead")
    if any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer):
        raise MoptError(f"{path} already has FP16 weights; convert the FP32 model instead")


def lineage_of(path: str | Path) -> str | None:
    """The sha256 of the file a model was made from (the checkpoint it was exported from, or the imported
    source), carried through simplify, FP16 and INT8; None for a model mopt did not write."""
    meta = read_metadata(path)
    return meta.get("mopt.checkpoint_sha256") or meta.get("mopt.source_sha256")


# --- the card ------------------------------------------------------------------------------------------------


def write_card(model: onnx.ModelProto, card: ModelCard) -> None:
    """Store ``card`` in the model's metadata (and the legacy normalization key older readers use)."""
    values = {CARD_KEY: card.to_json()}
    if card.normalization is not None:
        values["mopt.normalization"] = json.dumps(card.normalization.to_dict())
    set_metadata(model, values)


def card_of_model(model: onnx.ModelProto, source: str | Path = "model") -> ModelCard:
    """The card an ONNX carries, else one derived from older mopt metadata, else inferred from the graph.

    What the graph itself fixes (input and output names, a fixed H x W or batch) always wins over stored
    metadata: a graph edited after export must not be fed what its old card promised.
    """
    meta = metadata_of(model)
    value = image_input(model, source)
    if CARD_KEY in meta:
        card = ModelCard.from_json(meta[CARD_KEY], f"the model card of {source}")
    elif "mopt.arch" in meta:  # written by mopt before cards: a registered architecture
        config = json.loads(meta.get("mopt.config", "{}"))
        normalization = (
            Normalization.from_dict(json.loads(meta["mopt.normalization"])) if "mopt.normalization" in meta else None
        )
        card = legacy_card(meta["mopt.arch"], config, normalization)
    else:  # a foreign ONNX: what the graph says; ImageNet normalization until the user says otherwise
        card = ModelCard(arch="onnx", mean=IMAGENET.mean, std=IMAGENET.std)
    outputs = [o.name for o in model.graph.output]
    fixed = spatial_size(model)
    batch = value.type.tensor_type.shape.dim[0].dim_value or None
    return card.replace(
        input_name=value.name,
        output_name=outputs[0] if outputs else card.output_name,
        size=SizeRule(fixed=fixed) if fixed else card.size,
        batch=batch,
        output_channels=_output_channels(model, card.output_channels),
    )


def card_of_onnx(path: str | Path) -> ModelCard:
    """The card of the ONNX file at ``path`` (see :func:`card_of_model`)."""
    return card_of_model(load_onnx(path, load_weights=False), path)


def onnx_normalization(path: str | Path) -> Normalization:
    """The input normalization of an ONNX in the legacy ``(rgb/255 - mean)/std`` form (ImageNet's if none)."""
    return card_of_onnx(path).normalization or Normalization()


def _output_channels(model: onnx.ModelProto, default: int) -> int:
    if not model.graph.output:
        return default
    dims = model.graph.output[0].type.tensor_type.shape.dim
    return dims[1].dim_value if len(dims) == 4 and dims[1].dim_value in (1, 3) else default


def _dims_text(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim
    return "x".join(d.dim_param or str(d.dim_value) if (d.dim_param or d.dim_value) else "?" for d in dims) or "?"


def _type_name(value: onnx.ValueInfoProto) -> str:
    return TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()


# --- running in ONNX Runtime ---------------------------------------------------------------------------------


def onnx_session(model: str | Path | onnx.ModelProto, threads: int | None = None, label: str = "model"):
    """An ONNX Runtime CPU session, or a MoptError saying why the model cannot run there."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises Fail/InvalidGraph/NotImplemented from its C extension
        raise MoptError(f"ONNX Runtime (CPU) cannot run the {label}: {str(exc).splitlines()[0]}") from exc


def run_onnx(
    model: str | Path | onnx.ModelProto,
    inputs: np.ndarray,
    batch: int = 2,
    threads: int | None = None,
    label: str = "model",
) -> np.ndarray:
    """The result of ``inputs`` (N x 3 x H x W) from an ONNX model on ONNX Runtime's CPU provider, in batches.

    A model with a fixed batch dim is run one image at a time whatever ``batch`` says.
    """
    session = onnx_session(model, threads, label)
    first = session.get_inputs()[0]
    if isinstance(first.shape[0], int) and first.shape[0] > 0:
        batch = first.shape[0]
    outputs = []
    for start in range(0, len(inputs), batch):
        feed = np.ascontiguousarray(inputs[start : start + batch], dtype=np.float32)
        try:
            outputs.append(np.asarray(session.run(None, {first.name: feed})[0], dtype=np.float32))
        except Exception as exc:  # a kernel failing at run time (shape, missing type) is reported, not raised raw
            raise MoptError(f"ONNX Runtime (CPU) failed running the {label}: {str(exc).splitlines()[0]}") from exc
    return np.concatenate(outputs)
