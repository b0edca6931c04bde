"""The TensorRT calls themselves (optimize/tensorrt_api.py) through the stand-in module, which raises and returns
what the real binding raises and returns: builder/runtime creation, the per-build log, the timing-cache fallback,
engine description, and the execution session (binding, enqueue, a two-profile engine and its profile switch)."""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np
import pytest
import torch
from trt_standin import FakeStream, make_tensorrt, write_model

from optimize import tensorrt_api
from optimize.errors import MoptError
from optimize.profiles import ShapeProfile

SMALL = ShapeProfile((1, 3, 32, 32), (2, 3, 48, 48), (4, 3, 64, 64))
LARGE = ShapeProfile((1, 3, 64, 64), (8, 3, 96, 96), (16, 3, 128, 128))


def build(trt, onnx: Path, profiles=(SMALL,), cache: Path | None = None) -> tensorrt_api.BuildOutput:
    spec = tensorrt_api.BuildSpec(onnx_path=onnx, profiles=tuple(profiles), timing_cache=cache)
    return tensorrt_api.serialized_engine_from_onnx(trt, spec)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.onnx", input_name="input.1", output_name="mask")


# --- creating builders and runtimes ---------------------------------------------------------------------------


def test_builder_and_runtime_failures_are_type_errors_turned_into_one_line_errors(model: Path) -> None:
    trt = make_tensorrt("11.4.0", gpu=False)
    with pytest.raises(TypeError):  # the binding's own behaviour, which mopt must not mistake for None
        trt.Builder(tensorrt_api.trt_logger(trt))
    with pytest.raises(MoptError, match=r"could not create a builder .*: CUDA initialization failure") as info:
        build(trt, model)
    assert "\n" not in str(info.value) and isinstance(info.value.__cause__, TypeError)
    with pytest.raises(MoptError, match=r"could not create a runtime .*: CUDA initialization failure"):
        tensorrt_api.engine_from_bytes(trt, b"anything")


def test_a_runtime_that_cannot_read_the_engine_says_why(model: Path) -> None:
    built = build(make_tensorrt("10.13.0.35"), model)
    with pytest.raises(MoptError, match="not compatible with this version of TensorRT.*10.13.0.35"):
        tensorrt_api.engine_from_bytes(make_tensorrt("11.4.0"), built.engine)


# --- the log of one build -------------------------------------------------------------------------------------


def test_a_failed_build_shows_its_own_error_not_an_earlier_warning(model: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.cache"
    build(make_tensorrt("10.13.0.35"), model, cache=foreign)  # a cache another TensorRT wrote
    trt = make_tensorrt("11.4.0", build_ok=False, build_error=None)  # fails without an error of its own
    logger = tensorrt_api.trt_logger(trt)
    logger.log(trt.ILogger.WARNING, "an old warning from an earlier operation")
    with pytest.raises(MoptError) as info:
        build(trt, model, cache=foreign)
    message = str(info.value)
    assert "Timing cache" not in message and "old warning" not in message
    assert message.endswith("see the TensorRT log above")

    noisy = make_tensorrt("11.4.0", build_ok=False)
    with pytest.raises(MoptError, match="out of memory while building$"):
        build(noisy, model, cache=foreign)


def test_build_messages_are_those_of_this_build_only(model: Path, tmp_path: Path) -> None:
    trt = make_tensorrt("11.4.0")
    logger = tensorrt_api.trt_logger(trt)
    logger.log(trt.ILogger.ERROR, "before the build")
    logger.log(trt.ILogger.INFO, "informational, not kept")
    foreign = tmp_path / "foreign.cache"
    build(make_tensorrt("10.13.0.35"), model, cache=foreign)
    out = build(trt, model, cache=foreign)
    assert out.messages == ["Timing cache was created by TensorRT 10.13.0.35, this is 11.4.0"]


def test_log_book_marks_and_reasons() -> None:
    book = tensorrt_api.LogBook(keep=3)
    mark = book.mark()
    assert book.reason_since(mark) == "see the TensorRT log above"
    book.add("warning", "first warning")
    book.add("warning", "last warning\nwith detail")
    assert book.reason_since(mark) == "last warning"
    book.add("error", "the error")
    book.add("error", "a later error")
    assert book.reason_since(mark) == "the error"
    assert book.since(mark) == ["last warning\nwith detail", "the error", "a later error"]  # keeps the last 3
    assert book.since(book.mark()) == []


# --- timing cache ---------------------------------------------------------------------------------------------


def test_a_timing_cache_of_another_tensorrt_is_replaced_by_an_empty_one(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    build(make_tensorrt("10.13.0.35"), model, cache=cache)
    calls: list = []
    out = build(make_tensorrt("11.4.0", calls), model, cache=cache)
    assert [c for c in calls if c[0] == "set_timing_cache"] == [
        ("set_timing_cache", False, "10.13.0.35"),  # refused: strict check, as mopt asks
        ("set_timing_cache", False, "11.4.0"),  # the empty replacement
    ]
    assert not out.timing_cache_loaded and out.timing_cache_saved
    assert out.warnings == [f"timing cache {cache} does not match this TensorRT/GPU; starting an empty one"]
    again = build(make_tensorrt("11.4.0"), model, cache=cache)  # the saved cache is now this version's
    assert again.timing_cache_loaded and not again.warnings


def test_an_unreadable_timing_cache_is_replaced_too(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"not a timing cache")
    out = build(make_tensorrt("11.4.0"), model, cache=cache)
    assert out.warnings and not out.timing_cache_loaded and out.engine


def test_a_timing_cache_that_cannot_be_created_at_all_fails_the_build(model: Path, monkeypatch) -> None:
    trt = make_tensorrt("11.4.0")
    monkeypatch.setattr(trt.IBuilderConfig, "create_timing_cache", lambda self, data: None)
    with pytest.raises(MoptError, match="could not create an empty timing cache"):
        build(trt, model)


def test_no_timing_cache_to_save_is_a_warning(model: Path, tmp_path: Path, monkeypatch) -> None:
    trt = make_tensorrt("11.4.0")
    monkeypatch.setattr(trt.IBuilderConfig, "get_timing_cache", lambda self: None)
    out = build(trt, model, cache=tmp_path / "t.cache")
    assert out.warnings == ["TensorRT returned no timing cache to save"] and not (tmp_path / "t.cache").exists()


def test_rejected_profile_and_model_with_two_inputs(model: Path, tmp_path: Path, monkeypatch) -> None:
    trt = make_tensorrt("11.4.0")
    monkeypatch.setattr(trt.IBuilderConfig, "add_optimization_profile", lambda self, profile: -1)
    with pytest.raises(MoptError, match="rejected the optimization profile 1x3x32x32"):
        build(trt, model)
    two = write_model(tmp_path / "two.onnx")
    import onnx

    proto = onnx.load(str(two))
    proto.graph.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))
    onnx.save(proto, str(two))
    with pytest.raises(MoptError, match="has 2 inputs after parsing"):
        build(make_tensorrt("11.4.0"), two)


def test_flag_names_outside_the_checked_lists_are_refused(model: Path) -> None:
    trt = make_tensorrt("10.13.0.35")
    with pytest.raises(ValueError, match="INT8 is not in mopt's checked list"):
        tensorrt_api.serialized_engine_from_onnx(
            trt, tensorrt_api.BuildSpec(onnx_path=model, profiles=(SMALL,), builder_flags=("INT8",))
        )
    old = make_tensorrt("8.6.1")
    old.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
    with pytest.raises(MoptError, match="TensorRT 8.6.1 has no NetworkDefinitionCreationFlag.STRONGLY_TYPED"):
        tensorrt_api._network_flag_bits(old, ("STRONGLY_TYPED",))


# --- describing an engine -------------------------------------------------------------------------------------


def test_describe_reports_the_engines_own_io_per_profile(model: Path) -> None:
    trt = make_tensorrt("11.4.0", device_memory=123456)
    built = build(trt, model, profiles=(SMALL, LARGE))
    description = tensorrt_api.describe_serialized_engine(trt, built.engine)
    assert description["device_memory_bytes"] == 123456
    (inp,), (out,) = description["io"]["inputs"], description["io"]["outputs"]
    assert (inp["name"], inp["dtype"], inp["shape"]) == ("input.1", "float32", [-1, 3, -1, -1])
    assert inp["profiles"] == [SMALL.to_dict(), LARGE.to_dict()]
    assert (out["name"], out["dtype"], out["shape"]) == ("mask", "float32", [-1, 1, -1, -1])


def test_dtype_names(tmp_path: Path) -> None:
    trt = make_tensorrt("11.4.0")
    assert tensorrt_api.dtype_name(trt, trt.DataType.HALF) == "float16"
    assert tensorrt_api.torch_dtype(trt, trt.DataType.BF16) is torch.bfloat16
    with pytest.raises(MoptError, match="no torch equivalent"):
        tensorrt_api.dtype_name(trt, 99)


# --- executing ------------------------------------------------------------------------------------------------


@pytest.fixture
def session(model: Path, monkeypatch: pytest.MonkeyPatch):
    """A session on a two-profile engine, on the CPU (the stand-in reads and writes host memory)."""
    trt = make_tensorrt("11.4.0")
    calls = trt.calls
    loaded = tensorrt_api.engine_from_bytes(trt, build(trt, model, profiles=(SMALL, LARGE)).engine)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "torch-current-stream")
    session = tensorrt_api.ExecutionSession(trt, loaded.engine, torch.device("cpu"), stream=FakeStream(handle=42))
    calls.clear()
    return session, calls


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_session_reads_the_engines_io_and_profiles(session) -> None:
    s, _ = session
    assert (s.input_name, s.output_name) == ("input.1", "mask")
    assert s.input_dtype is torch.float32 and s.profiles == [SMALL, LARGE]
    assert s.device_memory_bytes == 64 << 20


def test_run_binds_enqueues_and_switches_profiles(session) -> None:
    s, calls = session
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 40, 40)).astype(np.float32))
    out = s.run(x)
    assert out.shape == (2, 1, 40, 40)
    np.testing.assert_allclose(out.numpy(), sigmoid(x.numpy()[:, :1]), rtol=1e-6)
    assert s.stream.waited == ["torch-current-stream"]  # the engine waits for torch's copy
    assert [c[0] for c in calls] == ["set_input_shape", "set_tensor_address", "set_tensor_address", "execute_async_v3"]
    assert ("execute_async_v3", 42) in calls and s.profile_index == 0

    calls.clear()
    big = torch.zeros((8, 3, 96, 128))
    assert s.run(big).shape == (8, 1, 96, 128)
    assert calls[0] == ("set_optimization_profile_async", 1, 42) and s.profile_index == 1
    calls.clear()
    s.run(torch.zeros((1, 3, 64, 64)))  # fits both: the first profile that accepts it, so a switch back
    assert calls[0] == ("set_optimization_profile_async", 0, 42)


def test_a_shape_outside_every_profile_is_refused_before_tensorrt(session) -> None:
    s, calls = session
    with pytest.raises(MoptError, match=r"input 32x3x64x64 is outside the engine's profiles .*--profile"):
        s.bind(torch.zeros((32, 3, 64, 64)))
    assert calls == []


def test_a_refused_profile_switch_raises_runtime_error_that_becomes_one_line(session) -> None:
    s, _ = session
    s.profiles.append(ShapeProfile((32, 3, 8, 8), (32, 3, 8, 8), (32, 3, 8, 8)))  # mopt believes in a 3rd one
    with pytest.raises(MoptError, match="could not switch to optimization profile 2: .*profile index 2 out of range"):
        s.bind(torch.zeros((32, 3, 8, 8)))
    assert s.profile_index == 0


def test_a_rejected_input_shape_says_what_tensorrt_said(session) -> None:
    s, _ = session
    s.profiles[0] = ShapeProfile((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))  # wider than the engine's profile 0
    with pytest.raises(MoptError, match=r"rejected input shape 1x3x8x8: .*outside profile 0"):
        s.bind(torch.zeros((1, 3, 8, 8)))


def test_enqueue_without_bound_tensors_fails_with_the_reason(session) -> None:
    s, _ = session
    with pytest.raises(MoptError, match="execution failed: enqueueV3: not all shapes and addresses"):
        s.enqueue()


def test_a_rejected_address_is_an_error(session, monkeypatch) -> None:
    s, _ = session
    monkeypatch.setattr(type(s.context), "set_tensor_address", lambda self, name, memory: False)
    with pytest.raises(MoptError, match="rejected the device address of 'input.1'"):
        s.bind(torch.zeros((1, 3, 32, 32)))


def test_no_execution_context_and_engines_that_are_not_matting_engines(model: Path, tmp_path: Path) -> None:
    trt = make_tensorrt("11.4.0", context_ok=False)
    loaded = tensorrt_api.engine_from_bytes(trt, build(trt, model).engine)
    with pytest.raises(MoptError, match="could not create an execution context: Requested amount of GPU memory"):
        tensorrt_api.ExecutionSession(trt, loaded.engine, torch.device("cpu"), stream=FakeStream())

    trt = make_tensorrt("11.4.0")
    two_out = write_model(tmp_path / "two.onnx")
    import onnx

    proto = onnx.load(str(two_out))
    proto.graph.output.append(onnx.helper.make_tensor_value_info("first", onnx.TensorProto.FLOAT, [1, 1, 1, 1]))
    onnx.save(proto, str(two_out))
    loaded = tensorrt_api.engine_from_bytes(trt, build(trt, two_out).engine)
    with pytest.raises(MoptError, match=r"outputs \['alpha', 'first'\]; a matting engine has one of each"):
        tensorrt_api.ExecutionSession(trt, loaded.engine, torch.device("cpu"), stream=FakeStream())


def test_close_releases_the_context(session) -> None:
    s, _ = session
    s.close()
    assert s.context is None


def test_load_tensorrt_without_tensorrt_names_the_extra(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    with pytest.raises(MoptError, match=r"pip install 'mopt\[tensorrt\]'"):
        tensorrt_api.load_tensorrt()
