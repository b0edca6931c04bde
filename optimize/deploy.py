"""engine or ONNX -> a Triton model repository for a production Triton Inference Server.

The repository holds one model, ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/<version>/model.plan`` (TensorRT
backend) or ``model.onnx`` (ONNX Runtime backend). The config is built as Triton's own ``ModelConfig`` protobuf
(shipped with ``tritonclient``) and printed with ``text_format``, so every field name and enum is checked by
protobuf rather than typed by hand.

The model served this way takes the preprocessed image tensor (N x 3 x H x W, normalized with the values recorded
in the config's ``mopt.normalization`` parameter) and returns the alpha matte (N x 1 x H x W in [0, 1]); decoding
and resizing stay with the client (or with ``mopt serve``, which does them server-side). Tensor names and data
types are the model's own: for an engine, those its sidecar recorded when it was built (older sidecars: mopt's
``input`` / ``alpha``, FP32); for an ONNX, those of its graph.

Shapes come from the engine's profiles (its JSON sidecar) or the ONNX's dims:

* ``max_batch_size``: Triton's TensorRT backend picks, per batch it runs, the listed profile closest to the
  batch's shape, and accepts a ``max_batch_size`` up to the largest profile max batch. Its dynamic batcher forms
  batches of every size from 1 to ``max_batch_size``, so ``max_batch_size`` is the largest B such that each batch
  size 1..B fits some profile: every batch Triton accepts has a profile, and no larger batch is accepted. (With
  one profile, that is its max batch.) A gap in the profiles' batch ranges stops it below the gap.
* H and W are ``-1`` unless every profile fixes them to one value; a request whose H x W no profile covers at its
  batch size is refused by the backend ("failed to find any Optimization Profile").
* Dynamic batching prefers the profiles' opt and max batches: the sizes TensorRT tuned its kernels for.
* An engine loads only in a Triton whose TensorRT built it: the config records the engine's TensorRT version and
  the Triton releases that ship it (:mod:`optimize.triton_releases`); ``--triton-version`` refuses a mismatch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimize.defaults import DEFAULT_MODEL_NAME as DEFAULT_MODEL_NAME
from optimize.defaults import DEFAULT_QUEUE_DELAY_US as DEFAULT_QUEUE_DELAY_US
from optimize.defaults import InstanceKind as InstanceKind  # the CLI's --kind choices
from optimize.deps import require
from optimize.engine import ENGINE_SUFFIXES, engine_io_from_sidecar, read_sidecar, sidecar_path
from optimize.errors import MoptError
from optimize.fileio import atomic_output, file_sha256
from optimize.identity import model_identity
from optimize.onnx_model import read_metadata
from optimize.profiles import ShapeProfile, format_shape, validate_profile
from optimize.triton_releases import check_triton_release, triton_match

ONNX_SUFFIX = ".onnx"
DEFAULT_ONNX_MAX_BATCH = 8
# Triton accepts the same characters in model names as in folder names it scans; stay with the portable set.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Data types (numpy / ONNX names) -> Triton data types.
_TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
}
# ONNX TensorProto element types of image tensors -> those names (the types a matting model's I/O can have).
_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16"}


@dataclass
class ModelSpec:
    """What the config needs to know about a model file, whatever its type.

    Attributes:
        path: the engine or ONNX file.
        kind: ``"tensorrt"`` or ``"onnxruntime"``.
        input_name / output_name: tensor names in the model.
        input_type / output_type: Triton data types of the two tensors (``TYPE_FP32``, ``TYPE_FP16``, ...).
        profiles: for an engine, its optimization profiles; for an ONNX, none.
        onnx_dims: for an ONNX, the input dims (ints fixed, strings dynamic).
        onnx_output_dims: for an ONNX, the output dims.
        metadata: facts copied into the config's ``parameters`` (precision, hashes, normalization...).
        tensorrt_version: for an engine, the TensorRT that built it (``None``: not recorded).
    """

    path: Path
    kind: str
    input_name: str
    output_name: str
    input_type: str
    output_type: str
    profiles: list[ShapeProfile]
    onnx_dims: list[int | str] | None
    metadata: dict[str, str]
    onnx_output_dims: list[int | str] | None = None
    tensorrt_version: str | None = None


def triton_type(dtype: str, what: str) -> str:
    """The Triton data type of a numpy/ONNX dtype name, or a MoptError naming ``what``."""
    if dtype not in _TRITON_TYPES:
        raise MoptError(f"{what} has data type {dtype!r}, which Triton has no type for")
    return _TRITON_TYPES[dtype]


def _model_config_pb2() -> Any:
    """Triton's ``ModelConfig`` protobuf module, shipped with ``tritonclient`` (the ``serve`` extra)."""
    require("tritonclient")  # a missing package is reported with the extra that installs it
    return require("tritonclient.grpc.model_config_pb2")


def validate_model_name(name: str) -> None:
    """Raise a MoptError unless ``name`` is a portable Triton model name (it is also a folder name)."""
    if not _MODEL_NAME.match(name):
        raise MoptError(
            f"model name {name!r} must be letters, digits, '_', '.' or '-', starting with a letter or digit"
        )


def read_engine_sidecar(plan: str | Path) -> dict[str, Any]:
    """The JSON sidecar ``mopt build-engine`` wrote beside an engine, checked against the engine file.

    Raises:
        MoptError: the sidecar is missing or unreadable, has no valid profiles, or describes another engine.
    """
    data = read_sidecar(plan)
    if data is None:
        raise MoptError(
            f"engine {plan} has no sidecar {sidecar_path(plan)}: its profiles are unknown; build it with "
            f"`mopt build-engine` (which writes the sidecar) or put the JSON beside it"
        )
    if not isinstance(data.get("profiles"), list) or not data["profiles"]:
        raise MoptError(
            f"engine sidecar {sidecar_path(plan)} has no 'profiles' list; rebuild with `mopt build-engine --force`"
        )
    # The engine's own I/O (names, dtypes, per-profile shapes); an older sidecar gets mopt's default names.
    for index, profile in enumerate(engine_io_from_sidecar(data, f"engine sidecar {sidecar_path(plan)}").profiles):
        validate_profile(profile, index)
    if data.get("engine_sha256") and data["engine_sha256"] != file_sha256(plan):
        raise MoptError(
            f"engine sidecar {sidecar_path(plan)} describes another engine (sha256 differs from {plan}); "
            f"rebuild with `mopt build-engine --force`"
        )
    return data


def engine_normalization(sidecar: dict[str, Any]) -> str | None:
    """The input normalization (JSON text) of the model an engine was built from, if it can be found.

    The sidecar's own ``normalization`` wins; otherwise the ``mopt.normalization`` metadata of the ONNX it names.
    """
    if sidecar.get("normalization") is not None:
        value = sidecar["normalization"]
        return value if isinstance(value, str) else json.dumps(value)
    onnx_path = sidecar.get("onnx")
    if onnx_path and Path(onnx_path).is_file():
        return read_metadata(onnx_path).get("mopt.normalization")
    return None


def _engine_spec(plan: Path) -> ModelSpec:
    sidecar = read_engine_sidecar(plan)
    where = f"engine sidecar {sidecar_path(plan)}"
    io = engine_io_from_sidecar(sidecar, where)
    metadata = {"mopt.source": plan.name}
    for key in ("precision", "tensorrt_version", "compute_capability", "gpu", "onnx_sha256", "engine_sha256",
                "mopt_version"):
        if sidecar.get(key) is not None:
            metadata[f"mopt.{key}"] = str(sidecar[key])
    match = triton_match(sidecar.get("tensorrt_version"))
    if match.releases:
        metadata["mopt.triton_releases"] = ",".join(match.releases)
    normalization = engine_normalization(sidecar)
    if normalization is not None:
        metadata["mopt.normalization"] = normalization
    return ModelSpec(
        path=plan,
        kind="tensorrt",
        input_name=io.input_name,
        output_name=io.output_name,
        input_type=triton_type(io.input_dtype, f"{where} input {io.input_name!r}"),
        output_type=triton_type(io.output_dtype, f"{where} output {io.output_name!r}"),
        profiles=list(io.profiles),
        onnx_dims=None,
        metadata=metadata,
        tensorrt_version=sidecar.get("tensorrt_version"),
    )


def _value_info_dims(value: Any) -> list[int | str]:
    """ONNX ValueInfo dims: ints where fixed, the dim's name (or ``"?"``) where dynamic."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def _onnx_spec(onnx_path: Path) -> ModelSpec:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    images = [i for i in model.graph.input if i.name not in weights]
    if len(images) != 1:
        raise MoptError(f"{onnx_path} has {len(images)} inputs; a matting model has one (the image)")
    if len(model.graph.output) != 1:
        raise MoptError(f"{onnx_path} has {len(model.graph.output)} outputs; a matting model has one (alpha)")
    image, output = images[0], model.graph.output[0]
    types = []
    for value, role in ((image, "input"), (output, "output")):
        elem_type = value.type.tensor_type.elem_type
        if elem_type not in _ONNX_DTYPES:
            raise MoptError(
                f"{onnx_path} {role} {value.name!r} has ONNX element type {elem_type}; expected float32, float16 "
                f"or bfloat16"
            )
        types.append(_TRITON_TYPES[_ONNX_DTYPES[elem_type]])
    dims, out_dims = _value_info_dims(image), _value_info_dims(output)
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        raise MoptError(f"{onnx_path} input {image.name!r} has dims {dims}; expected N x 3 x H x W")
    if len(out_dims) != 4 or (isinstance(out_dims[1], int) and out_dims[1] != 1):
        raise MoptError(f"{onnx_path} output {output.name!r} has dims {out_dims}; expected N x 1 x H x W")
    meta = read_metadata(onnx_path)
    metadata = {"mopt.source": onnx_path.name}
    metadata.update({k: v for k, v in meta.items() if k in ("mopt.precision", "mopt.arch", "mopt.normalization",
                                                          "mopt.checkpoint_sha256", "mopt.version")})
    return ModelSpec(
        path=onnx_path,
        kind="onnxruntime",
        input_name=image.name,
        output_name=output.name,
        input_type=types[0],
        output_type=types[1],
        profiles=[],
        onnx_dims=dims,
        metadata=metadata,
        onnx_output_dims=out_dims,
    )


def model_spec_from_file(model_path: str | Path) -> ModelSpec:
    """Read what the Triton config needs from an engine (+ sidecar) or an ONNX file.

    Raises:
        MoptError: missing file, unknown type, missing sidecar, unusable dims.
    """
    path = Path(model_path)
    if not path.is_file():
        raise MoptError(f"model {path} does not exist; give a TensorRT engine (.plan) or an ONNX file")
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return _engine_spec(path)
    if suffix == ONNX_SUFFIX:
        return _onnx_spec(path)
    raise MoptError(
        f"{path} is neither a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}) nor an ONNX model ({ONNX_SUFFIX}); "
        f"pass one of those"
    )


def profile_batch_limit(profiles: list[ShapeProfile]) -> int:
    """The largest B such that every batch size 1..B fits the batch range of some profile (0: batch 1 fits none).

    Triton's dynamic batcher forms batches of any size up to ``max_batch_size``: each must have a profile.
    """
    limit = 0
    while any(p.min[0] <= limit + 1 <= p.max[0] for p in profiles):
        limit += 1
    return limit


def _batch_limits(spec: ModelSpec, max_batch: int | None) -> tuple[int, list[int]]:
    """``(max_batch_size, preferred batch sizes)``; ``max_batch_size`` 0 means the model cannot batch."""
    if spec.kind == "tensorrt":
        profile_limit = profile_batch_limit(spec.profiles)
        if profile_limit == 0:
            smallest = min(p.min[0] for p in spec.profiles)
            raise MoptError(
                f"engine {spec.path} needs a batch of at least {smallest}, but Triton sends batches from 1 up; "
                f"rebuild it with a min batch of 1 (e.g. --min 1x3x256x256)"
            )
        if max_batch is not None and max_batch > profile_limit:
            raise MoptError(
                f"--max-batch {max_batch} exceeds the largest batch the engine's profiles run from 1 up "
                f"({profile_limit}); use at most {profile_limit} or rebuild the engine with a larger --max batch"
            )
        limit = max_batch or profile_limit
        candidates = {p.opt[0] for p in spec.profiles} | {p.max[0] for p in spec.profiles}
    else:
        batch_dim = spec.onnx_dims[0] if spec.onnx_dims else "?"
        if isinstance(batch_dim, int):
            if max_batch is not None and max_batch != batch_dim:
                raise MoptError(
                    f"{spec.path} has a fixed batch of {batch_dim}; --max-batch {max_batch} cannot apply: re-export "
                    f"it with a dynamic batch (`mopt export` without --static-batch)"
                )
            return 0, []
        limit = max_batch or DEFAULT_ONNX_MAX_BATCH
        candidates = {limit // 2, limit}
    preferred = sorted(b for b in candidates if 1 <= b <= limit)
    # A preferred size equal to max_batch_size only adds a wait for a batch that also closes by size anyway,
    # but Triton accepts it; keep it so a full batch is dispatched at once.
    return limit, preferred


def _spatial_dims(spec: ModelSpec, dims: list[int | str] | None) -> list[int]:
    """``[H, W]`` for the config: a fixed value where every profile (or the ONNX tensor's dims) fixes it, else -1."""
    result = []
    for axis in (2, 3):
        if spec.kind == "tensorrt":
            values = {p.min[axis] for p in spec.profiles} | {p.max[axis] for p in spec.profiles}
            result.append(values.pop() if len(values) == 1 else -1)
        else:
            value = dims[axis] if dims else "?"
            result.append(value if isinstance(value, int) else -1)
    return result


def triton_config_from_spec(
    spec: ModelSpec,
    *,
    name: str = DEFAULT_MODEL_NAME,
    max_batch: int | None = None,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance_kind: InstanceKind = InstanceKind.gpu,
    instances: int = 1,
):
    """Build the ``ModelConfig`` protobuf for ``spec``.

    Args:
        spec: from :func:`model_spec_from_file`.
        name: model name (the folder name in the repository).
        max_batch: cap on Triton's batch; defaults to the largest batch the engine's profiles run from 1 up
            (:func:`profile_batch_limit`), or :data:`DEFAULT_ONNX_MAX_BATCH` for an ONNX with a dynamic batch.
        max_queue_delay_us: how long the dynamic batcher may hold a request to fill a batch.
        instance_kind: GPU or CPU instances (engines run on GPUs only).
        instances: model instances per device.

    Returns:
        A ``tritonclient.grpc.model_config_pb2.ModelConfig``.
    """
    model_config_pb2 = _model_config_pb2()
    validate_model_name(name)
    if instances < 1:
        raise MoptError(f"--instances must be at least 1, got {instances}")
    if max_batch is not None and max_batch < 1:
        raise MoptError(f"--max-batch must be at least 1, got {max_batch}")
    if max_queue_delay_us < 0:
        raise MoptError(f"--max-queue-delay-us must be >= 0, got {max_queue_delay_us}")
    if spec.kind == "tensorrt" and instance_kind is InstanceKind.cpu:
        raise MoptError("a TensorRT engine runs on a GPU only; drop --instance-kind cpu or deploy the ONNX instead")

    max_batch_size, preferred = _batch_limits(spec, max_batch)
    height, width = _spatial_dims(spec, spec.onnx_dims)
    out_height, out_width = _spatial_dims(spec, spec.onnx_output_dims or spec.onnx_dims)
    batch_prefix = [] if max_batch_size > 0 else [spec.onnx_dims[0]]  # a fixed-batch model lists its batch dim

    config = model_config_pb2.ModelConfig()
    config.name = name
    if spec.kind == "tensorrt":
        config.platform = "tensorrt_plan"
        config.backend = "tensorrt"
        config.default_model_filename = "model.plan"
    else:
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
        config.default_model_filename = "model.onnx"
    config.max_batch_size = max_batch_size
    config.input.add(
        name=spec.input_name,
        data_type=model_config_pb2.DataType.Value(spec.input_type),
        dims=[*batch_prefix, 3, height, width],
    )
    config.output.add(
        name=spec.output_name,
        data_type=model_config_pb2.DataType.Value(spec.output_type),
        dims=[*batch_prefix, 1, out_height, out_width],
    )
    if max_batch_size > 0:
        config.dynamic_batching.preferred_batch_size.extend(preferred)
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    group = config.instance_group.add(
        count=instances,
        kind=model_config_pb2.ModelInstanceGroup.Kind.Value(f"KIND_{instance_kind.value.upper()}"),
    )
    if spec.kind == "tensorrt" and len(spec.profiles) > 1:
        # Without this list the TensorRT backend uses profile 0 only; with it, each request runs in the
        # profile that fits its shape best.
        group.profile.extend(str(i) for i in range(len(spec.profiles)))
    for key, value in sorted(spec.metadata.items()):
        config.parameters[key].string_value = value
    return config


def config_comment(spec: ModelSpec, config) -> str:
    """``#`` lines at the top of ``config.pbtxt`` that say where its limits come from (Triton ignores them)."""
    paragraphs = [f"Written by mopt from {spec.path.name}."]
    if spec.kind == "tensorrt":
        ranges = ", ".join(f"profile {i}: batch {p.min[0]}-{p.max[0]}" for i, p in enumerate(spec.profiles))
        paragraphs += [
            f"max_batch_size {config.max_batch_size}: the largest B such that every batch 1..B fits one of the "
            f"engine's profiles ({ranges}). Triton runs each batch in the closest listed profile, so every batch "
            f"it accepts has a profile and no larger batch is accepted; a request whose H x W no profile covers at "
            f"its batch is refused by the TensorRT backend.",
            triton_match(spec.tensorrt_version).advice() + ".",
        ]
    elif config.max_batch_size:
        paragraphs.append(f"max_batch_size {config.max_batch_size}: the ONNX batch is dynamic; --max-batch sets it.")
    lines = [line for text in paragraphs for line in textwrap.wrap(text, 110)]
    return "".join(f"# {line}\n" for line in lines)


def config_text(config, spec: ModelSpec | None = None) -> str:
    """The ``config.pbtxt`` text of a ``ModelConfig`` (with :func:`config_comment` first when ``spec`` is given)."""
    from google.protobuf import text_format

    header = config_comment(spec, config) if spec is not None else ""
    return header + text_format.MessageToString(config)


def read_model_config(path: str | Path):
    """Parse a ``config.pbtxt`` into Triton's ``ModelConfig`` protobuf (the check Triton itself makes first)."""
    from google.protobuf import text_format

    model_config_pb2 = _model_config_pb2()
    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise MoptError(f"{path} is not a valid Triton model config: {exc}") from exc


def _external_data_files(onnx_path: Path) -> list[str]:
    """Relative paths of the weight files an ONNX model keeps outside itself (large models)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(onnx_path), load_external_data=False)
    files = set()
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            files.add(ExternalDataInfo(tensor).location)
    return sorted(files)


def _replace_dir(staged: Path, target: Path) -> None:
    """Move ``staged`` onto ``target`` so that ``target`` is at every moment either the old or the new folder."""
    if not target.exists():
        os.rename(staged, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=staged.parent))
    os.rename(target, trash / target.name)
    os.rename(staged, target)
    shutil.rmtree(trash, ignore_errors=True)


def triton_repository_from_model(
    model_path: str | Path,
    output_repo: str | Path,
    *,
    name: str = DEFAULT_MODEL_NAME,
    version: int = 1,
    max_batch: int | None = None,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance_kind: InstanceKind | None = None,
    instances: int = 1,
    force: bool = False,
    triton_version: str | None = None,
) -> Path:
    """Write ``output_repo/<name>/`` (config.pbtxt + ``<version>/model.plan|model.onnx``) for Triton.

    The model folder is assembled in a temporary folder beside the repository and renamed into place, so a
    failure leaves nothing behind and a Triton polling the repository never sees a half-written model. Other
    models already in ``output_repo`` are left alone.

    Args:
        model_path: a TensorRT engine with its JSON sidecar, or an ONNX model.
        output_repo: the model repository folder (created if missing).
        name: model name.
        version: model version folder.
        max_batch: see :func:`triton_config_from_spec`.
        max_queue_delay_us: dynamic batcher queue delay.
        instance_kind: GPU or CPU instances (CPU only for ONNX); default :func:`default_instance_kind`.
        instances: instances per device.
        force: replace what is in the way: the ``<version>`` folder of a model with the same I/O, or the whole
            ``output_repo/<name>`` of another model. Without it, a new version is added beside existing ones of
            a model with the same I/O, and anything else already there is refused.
        triton_version: the Triton release (``YY.MM``) that will serve the engine: refused unless its TensorRT
            is the engine's. ONNX models run in any Triton with the ONNX Runtime backend, so it is not checked.

    Returns:
        The model folder ``output_repo/<name>``.

    Raises:
        MoptError: bad model file, missing sidecar, bad options, an existing model without ``force``, or a
            ``triton_version`` whose TensorRT cannot load the engine.
    """
    spec = model_spec_from_file(model_path)
    if version < 1:
        raise MoptError(f"--version must be a positive integer, got {version}")
    if triton_version is not None and spec.kind == "tensorrt":
        check_triton_release(triton_version, spec.tensorrt_version)
    identity = model_identity(spec.path)
    spec.metadata.update(
        {f"mopt.model.{version}.{key}": str(value) for key, value in identity.to_dict().items() if key != "path"}
    )
    spec.metadata[f"mopt.model.{version}.file"] = spec.path.name
    config = triton_config_from_spec(
        spec,
        name=name,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=instance_kind or default_instance_kind(spec),
        instances=instances,
    )
    repo = Path(output_repo)
    if repo.exists() and not repo.is_dir():
        raise MoptError(f"output repository {repo} is a file; give a folder (it may hold other models)")
    target = repo / name
    only_version = False  # True: the model stays, only its <version>/ folder and config.pbtxt are written
    if target.exists():
        existing = target / "config.pbtxt"
        old = read_model_config(existing) if existing.is_file() else None
        difference = config_difference(old, config) if old is not None else "it has no config.pbtxt"
        if difference is not None and not force:
            raise MoptError(
                f"{target} already exists and serves another model ({difference}); pass --force to replace the "
                f"whole model or choose another --name"
            )
        if difference is None:
            if (target / str(version)).exists() and not force:
                raise MoptError(
                    f"{target / str(version)} already exists; pass --force to replace that version, or add this "
                    f"model beside it with another --version"
                )
            only_version = True
            # Older versions keep their own record (file, sha256, ...) in the config's parameters.
            for key, value in old.parameters.items():
                if key.startswith("mopt.model.") and not key.startswith(f"mopt.model.{version}."):
                    config.parameters[key].string_value = value.string_value
    extra_files = _external_data_files(spec.path) if spec.kind == "onnxruntime" else []

    # Stage beside the repository (same file system, so the final rename is atomic) and outside it, so a
    # Triton polling the repository never picks the staging folder up as a model.
    parent = repo.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}-{name}.", dir=parent))
    try:
        staged = staging / name
        (staged / str(version)).mkdir(parents=True)
        model_file = "model.plan" if spec.kind == "tensorrt" else "model.onnx"
        shutil.copyfile(spec.path, staged / str(version) / model_file)
        for relative in extra_files:
            source = spec.path.parent / relative
            if not source.is_file():
                raise MoptError(f"{spec.path} keeps weights in {relative}, which is missing beside it")
            destination = staged / str(version) / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        (staged / "config.pbtxt").write_text(config_text(config, spec))
        repo.mkdir(parents=True, exist_ok=True)
        if only_version:
            # The version folder first, then the config that describes it: each replaced in one rename.
            _replace_dir(staged / str(version), target / str(version))
            with atomic_output(target / "config.pbtxt") as tmp:
                shutil.copyfile(staged / "config.pbtxt", tmp)
        else:
            _replace_dir(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_instance_kind(spec: ModelSpec) -> InstanceKind:
    """GPU instances for an engine, or for an ONNX when an NVIDIA GPU is visible here; else CPU instances.

    A config asking for ``KIND_GPU`` does not load in a Triton without a GPU, so an ONNX deployed on a CPU-only
    machine gets ``KIND_CPU`` unless the user names the kind (``--kind gpu`` for a GPU server elsewhere).
    """
    from optimize.engine import gpu_environment

    if spec.kind == "tensorrt" or gpu_environment().gpu:
        return InstanceKind.gpu
    return InstanceKind.cpu


def config_difference(old, new) -> str | None:
    """What makes two model configs serve different models (backend, batch, tensors), ``None`` when compatible.

    Versions of one Triton model share its config, so a new version can only join models with the same I/O;
    batching delays, instance counts and parameters are settings, not part of the contract.
    """
    for field_name in ("backend", "platform", "max_batch_size"):
        if getattr(old, field_name) != getattr(new, field_name):
            return f"{field_name} {getattr(old, field_name)!r}, this one {getattr(new, field_name)!r}"
    for role in ("input", "output"):
        before = [(t.name, t.data_type, list(t.dims)) for t in getattr(old, role)]
        after = [(t.name, t.data_type, list(t.dims)) for t in getattr(new, role)]
        if before != after:
            return f"{role} {_tensors_text(getattr(old, role))}, this one {_tensors_text(getattr(new, role))}"
    return None


def _tensors_text(tensors) -> str:
    model_config_pb2 = _model_config_pb2()
    return ", ".join(
        f"{t.name} {model_config_pb2.DataType.Name(t.data_type)} [{format_shape(t.dims)}]" for t in tensors
    )


def instance_kind_name(config) -> str:
    """``KIND_GPU`` or ``KIND_CPU``: where the config's first instance group runs."""
    return _model_config_pb2().ModelInstanceGroup.Kind.Name(config.instance_group[0].kind)


def describe_config(config) -> str:
    """One line on what a config serves, for the CLI."""
    dims = format_shape(config.input[0].dims)
    batching = (
        f"max batch {config.max_batch_size}, preferred {list(config.dynamic_batching.preferred_batch_size)}"
        if config.max_batch_size
        else "no batching (fixed batch)"
    )
    return f"{config.name}: {config.backend}, input {config.input[0].name} [{dims}], {batching}"
