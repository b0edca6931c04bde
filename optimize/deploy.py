"""engine or ONNX -> a Triton model repository for a production Triton Inference Server.

The repository holds one model, ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/<version>/model.plan`` (TensorRT
backend) or ``model.onnx`` (ONNX Runtime backend). The config is built as Triton's own ``ModelConfig`` protobuf
(shipped with ``tritonclient``) and printed with ``text_format``, so every field name and enum is checked by
protobuf rather than typed by hand.

The model served this way takes the preprocessed tensor (``input``: N x 3 x H x W float32, normalized with the
values recorded in the config's ``mopt.normalization`` parameter) and returns ``alpha`` (N x 1 x H x W in
[0, 1]); decoding and resizing stay with the client (or with ``mopt serve``, which does them server-side).

Shapes come from the engine's profiles (its JSON sidecar) or the ONNX's dims:

* ``max_batch_size`` is the largest batch every profile accepts. Triton sizes its buffers for
  ``max_batch_size x dims`` on every profile an instance uses, so it must fit the smallest profile max.
* H and W are ``-1`` unless every profile fixes them to one value.
* Dynamic batching prefers the profiles' opt and max batches: the sizes TensorRT tuned its kernels for.
"""

from __future__ import annotations

import enum
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimize.deps import require
from optimize.engine import ENGINE_SUFFIXES, read_sidecar, sidecar_path
from optimize.errors import MoptError
from optimize.export import INPUT_NAME, OUTPUT_NAME, read_metadata
from optimize.fileio import file_sha256
from optimize.profiles import ShapeProfile, format_shape, onnx_input_dims, validate_profile

ONNX_SUFFIX = ".onnx"
DEFAULT_MODEL_NAME = "cvunet"
DEFAULT_ONNX_MAX_BATCH = 8
DEFAULT_QUEUE_DELAY_US = 2000
# Triton accepts the same characters in model names as in folder names it scans; stay with the portable set.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# ONNX TensorProto element types of the image tensors -> Triton data types.
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16"}


class InstanceKind(str, enum.Enum):
    """Where Triton runs the model instances."""

    gpu = "gpu"
    cpu = "cpu"


@dataclass
class ModelSpec:
    """What the config needs to know about a model file, whatever its type.

    Attributes:
        path: the engine or ONNX file.
        kind: ``"tensorrt"`` or ``"onnxruntime"``.
        input_name / output_name: tensor names in the model.
        data_type: Triton type of both tensors (``TYPE_FP32`` unless the I/O itself is half precision).
        profiles: for an engine, its optimization profiles; for an ONNX, none.
        onnx_dims: for an ONNX, the input dims (ints fixed, strings dynamic).
        metadata: facts copied into the config's ``parameters`` (precision, hashes, normalization...).
    """

    path: Path
    kind: str
    input_name: str
    output_name: str
    data_type: str
    profiles: list[ShapeProfile]
    onnx_dims: list[int | str] | None
    metadata: dict[str, str]


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
    for index, profile in enumerate(data["profiles"]):
        validate_profile(ShapeProfile.from_dict(profile), index)
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
    profiles = [ShapeProfile.from_dict(p) for p in sidecar["profiles"]]
    metadata = {"mopt.source": plan.name}
    for key in ("precision", "tensorrt_version", "compute_capability", "gpu", "onnx_sha256", "engine_sha256",
                "mopt_version"):
        if sidecar.get(key) is not None:
            metadata[f"mopt.{key}"] = str(sidecar[key])
    normalization = engine_normalization(sidecar)
    if normalization is not None:
        metadata["mopt.normalization"] = normalization
    return ModelSpec(
        path=plan,
        kind="tensorrt",
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        data_type="TYPE_FP32",  # mopt builds keep the I/O in FP32 (AutoCast keep_io_types) at every precision
        profiles=profiles,
        onnx_dims=None,
        metadata=metadata,
    )


def _onnx_spec(onnx_path: Path) -> ModelSpec:
    import onnx

    input_name, dims = onnx_input_dims(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    if len(model.graph.output) != 1:
        raise MoptError(f"{onnx_path} has {len(model.graph.output)} outputs; a matting model has one (alpha)")
    output = model.graph.output[0]
    weights = {init.name for init in model.graph.initializer}
    image = next(i for i in model.graph.input if i.name not in weights)
    elem_type = image.type.tensor_type.elem_type
    if elem_type not in _ONNX_TO_TRITON:
        raise MoptError(
            f"{onnx_path} input {input_name!r} has ONNX element type {elem_type}; expected float32 or float16"
        )
    if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        raise MoptError(f"{onnx_path} input {input_name!r} has dims {dims}; expected N x 3 x H x W")
    meta = read_metadata(onnx_path)
    metadata = {"mopt.source": onnx_path.name}
    metadata.update({k: v for k, v in meta.items() if k in ("mopt.precision", "mopt.arch", "mopt.normalization",
                                                          "mopt.checkpoint_sha256", "mopt.version")})
    return ModelSpec(
        path=onnx_path,
        kind="onnxruntime",
        input_name=input_name,
        output_name=output.name,
        data_type=_ONNX_TO_TRITON[elem_type],
        profiles=[],
        onnx_dims=dims,
        metadata=metadata,
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


def _batch_limits(spec: ModelSpec, max_batch: int | None) -> tuple[int, list[int]]:
    """``(max_batch_size, preferred batch sizes)``; ``max_batch_size`` 0 means the model cannot batch."""
    if spec.kind == "tensorrt":
        profile_max = min(p.max[0] for p in spec.profiles)
        profile_min = max(p.min[0] for p in spec.profiles)
        if profile_min > 1:
            raise MoptError(
                f"engine {spec.path} needs a batch of at least {profile_min}, but Triton sends batches from 1 up; "
                f"rebuild it with a min batch of 1 (e.g. --min 1x3x256x256)"
            )
        if max_batch is not None and max_batch > profile_max:
            raise MoptError(
                f"--max-batch {max_batch} exceeds the engine's profile max batch {profile_max}; use at most "
                f"{profile_max} or rebuild the engine with a larger --max batch"
            )
        limit = max_batch or profile_max
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


def _spatial_dims(spec: ModelSpec) -> list[int]:
    """``[H, W]`` for the config: a fixed value where every profile (or the ONNX) fixes it, else -1."""
    dims = []
    for axis in (2, 3):
        if spec.kind == "tensorrt":
            values = {p.min[axis] for p in spec.profiles} | {p.max[axis] for p in spec.profiles}
            dims.append(values.pop() if len(values) == 1 else -1)
        else:
            value = spec.onnx_dims[axis] if spec.onnx_dims else "?"
            dims.append(value if isinstance(value, int) else -1)
    return dims


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
        max_batch: cap on Triton's batch; defaults to the engine's profile max batch, or
            :data:`DEFAULT_ONNX_MAX_BATCH` for an ONNX with a dynamic batch.
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
    height, width = _spatial_dims(spec)
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
        data_type=model_config_pb2.DataType.Value(spec.data_type),
        dims=[*batch_prefix, 3, height, width],
    )
    config.output.add(
        name=spec.output_name,
        data_type=model_config_pb2.DataType.Value(spec.data_type),
        dims=[*batch_prefix, 1, height, width],
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


def config_text(config) -> str:
    """The ``config.pbtxt`` text of a ``ModelConfig``."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)


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
        instance_kind: GPU (default) or CPU instances; CPU only for ONNX.
        instances: instances per device.
        force: replace an existing ``output_repo/<name>``.

    Returns:
        The model folder ``output_repo/<name>``.

    Raises:
        MoptError: bad model file, missing sidecar, bad options, or an existing model without ``force``.
    """
    spec = model_spec_from_file(model_path)
    if version < 1:
        raise MoptError(f"--version must be a positive integer, got {version}")
    config = triton_config_from_spec(
        spec,
        name=name,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instance_kind=instance_kind or InstanceKind.gpu,
        instances=instances,
    )
    repo = Path(output_repo)
    if repo.exists() and not repo.is_dir():
        raise MoptError(f"output repository {repo} is a file; give a folder (it may hold other models)")
    target = repo / name
    if target.exists() and not force:
        raise MoptError(f"{target} already exists; pass --force to replace it or choose another --name")
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
        (staged / "config.pbtxt").write_text(config_text(config))
        repo.mkdir(parents=True, exist_ok=True)
        _replace_dir(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def describe_config(config) -> str:
    """One line on what a config serves, for the CLI."""
    dims = format_shape(config.input[0].dims)
    batching = (
        f"max batch {config.max_batch_size}, preferred {list(config.dynamic_batching.preferred_batch_size)}"
        if config.max_batch_size
        else "no batching (fixed batch)"
    )
    return f"{config.name}: {config.backend}, input {config.input[0].name} [{dims}], {batching}"
