"""Optimization profiles: parsing, validation on their own and against the ONNX input's dims."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from optimize.errors import MoptError
from optimize.profiles import (
    DEFAULT_PROFILE,
    ShapeProfile,
    onnx_input_dims,
    profiles_from_options,
    validate_profile,
    validate_profiles,
)


def write_onnx(path: Path, dims: list, name: str = "input") -> Path:
    """A one-node model whose input has ``dims`` (ints fixed, strings dynamic)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", [name], ["alpha"])],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, dims)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_parse_round_trips_and_default_is_the_documented_one() -> None:
    text = "1x3x256x256:4x3x512x512:8x3x1024x1024"
    assert ShapeProfile.parse(text) == DEFAULT_PROFILE
    assert str(DEFAULT_PROFILE) == text
    assert ShapeProfile.from_dict(DEFAULT_PROFILE.to_dict()) == DEFAULT_PROFILE


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1x3x256x256:4x3x512x512", "min:opt:max"),
        ("1x3x256:4x3x512x512:8x3x1024x1024", "4 positive integers"),
        ("1x3x256x256:4x3xbigx512:8x3x1024x1024", "4 positive integers"),
        ("0x3x256x256:4x3x512x512:8x3x1024x1024", "4 positive integers"),
    ],
)
def test_parse_rejects_malformed_profiles(text: str, fragment: str) -> None:
    with pytest.raises(MoptError, match=fragment):
        ShapeProfile.parse(text)


def test_options_default_fill_and_extra_profiles() -> None:
    assert profiles_from_options() == [DEFAULT_PROFILE]
    widened = profiles_from_options(max_shape="16x3x2048x2048")
    assert widened == [ShapeProfile(DEFAULT_PROFILE.min, DEFAULT_PROFILE.opt, (16, 3, 2048, 2048))]
    two = profiles_from_options(profiles=["1x3x64x64:1x3x64x64:1x3x64x64", "2x3x128x128:2x3x128x128:4x3x256x256"])
    assert [p.max for p in two] == [(1, 3, 64, 64), (4, 3, 256, 256)]


def test_min_above_opt_names_the_dim_and_the_fix() -> None:
    with pytest.raises(MoptError) as info:
        profiles_from_options("1x3x768x256", "4x3x512x512", "8x3x1024x1024")
    message = str(info.value)
    assert "height (dim 2)" in message and "min 768 > opt 512" in message
    assert "lower the min height or raise the opt height" in message
    assert "\n" not in message


def test_opt_above_max_names_the_dim() -> None:
    with pytest.raises(MoptError, match=r"batch \(dim 0\) has opt 16 > max 8"):
        validate_profile(ShapeProfile((1, 3, 64, 64), (16, 3, 64, 64), (8, 3, 64, 64)))


def test_channels_must_be_three_with_the_corrected_shape() -> None:
    with pytest.raises(MoptError, match=r"4 channels.*use 1x3x256x256"):
        profiles_from_options(min_shape="1x4x256x256")


def test_contains() -> None:
    assert DEFAULT_PROFILE.contains((2, 3, 300, 700))
    assert not DEFAULT_PROFILE.contains((9, 3, 512, 512))
    assert not DEFAULT_PROFILE.contains((1, 3, 128, 512))
    assert not DEFAULT_PROFILE.contains((1, 3, 512))


def test_onnx_input_dims_reads_fixed_and_dynamic_dims(tmp_path: Path) -> None:
    path = write_onnx(tmp_path / "m.onnx", ["batch", 3, "height", "width"])
    assert onnx_input_dims(path) == ("input", ["batch", 3, "height", "width"])


def test_exported_model_is_dynamic_in_batch_height_width(tiny_onnx: Path) -> None:
    name, dims = onnx_input_dims(tiny_onnx)
    assert name == "input"
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    validate_profiles([DEFAULT_PROFILE], dims, model=str(tiny_onnx))


def test_fixed_batch_rejects_a_batch_range_and_says_how_to_fix(tmp_path: Path) -> None:
    path = write_onnx(tmp_path / "static.onnx", [1, 3, "height", "width"])
    dims = onnx_input_dims(path)[1]
    with pytest.raises(MoptError) as info:
        validate_profiles([DEFAULT_PROFILE], dims, model=str(path))
    message = str(info.value)
    assert "batch (dim 0) is fixed to 1" in message and "asks 1..8" in message
    assert "without --static-batch" in message and "set the batch to 1 in --min, --opt and --max" in message
    fitting = ShapeProfile((1, 3, 256, 256), (1, 3, 512, 512), (1, 3, 1024, 1024))
    validate_profiles([fitting], dims, model=str(path))


def test_fixed_spatial_dims_must_match(tmp_path: Path) -> None:
    dims = onnx_input_dims(write_onnx(tmp_path / "fixed.onnx", ["batch", 3, 512, 512]))[1]
    with pytest.raises(MoptError, match=r"height \(dim 2\) is fixed to 512"):
        validate_profiles([DEFAULT_PROFILE], dims)


def test_rank_mismatch_and_multiple_profiles_are_named(tmp_path: Path) -> None:
    with pytest.raises(MoptError, match="rank 3"):
        validate_profiles([DEFAULT_PROFILE], onnx_input_dims(write_onnx(tmp_path / "r3.onnx", [3, "h", "w"]))[1])
    bad_second = [DEFAULT_PROFILE, ShapeProfile((1, 3, 64, 64), (1, 3, 32, 64), (1, 3, 64, 64))]
    with pytest.raises(MoptError, match=r"^profile 1: height"):
        validate_profiles(bad_second, ["batch", 3, "height", "width"])


def test_unreadable_onnx_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(MoptError, match="not a readable ONNX model"):
        onnx_input_dims(bad)


def test_a_fixed_size_model_gets_the_default_profile_pinned_to_its_size() -> None:
    from optimize.profiles import DEFAULT_PROFILE, profile_for_fixed_dims

    pinned = profile_for_fixed_dims(DEFAULT_PROFILE, ["batch", 3, 320, 320])
    assert pinned.min[2:] == pinned.opt[2:] == pinned.max[2:] == (320, 320)
    assert pinned.min[0] == DEFAULT_PROFILE.min[0] and pinned.max[0] == DEFAULT_PROFILE.max[0]
    validate_profiles([pinned], ["batch", 3, 320, 320])  # now it fits
    with pytest.raises(MoptError, match="fixed to 320"):
        validate_profiles([DEFAULT_PROFILE], ["batch", 3, 320, 320])


def test_profile_sizes_must_be_multiples_of_the_cards_size_multiple() -> None:
    ok = ShapeProfile((1, 3, 256, 256), (4, 3, 512, 512), (8, 3, 1024, 1024))
    validate_profiles([ok], ["batch", 3, "height", "width"], multiple=32)
    odd = ShapeProfile((1, 3, 250, 256), (4, 3, 512, 512), (8, 3, 1024, 1024))
    with pytest.raises(MoptError, match=r"--min 1x3x250x256 .* multiples of 32 .* 1x3x256x256"):
        validate_profiles([odd], ["batch", 3, "height", "width"], model="m.onnx", multiple=32)
