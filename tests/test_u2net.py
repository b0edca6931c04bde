"""U²-Net / U²-NetP: the authors' parameter names and shapes, any input size, and a clean ONNX export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from architectures import create_model
from optimize.checkpoint import load_checkpoint, save_checkpoint
from optimize.errors import MoptError

# The published structure (xuebinqin/U-2-Net model/u2net.py), written out independently of architectures/u2net.py:
# stage -> (RSU height, "4F" for the dilated RSU-4F; in, mid, out channels).
U2NET_STAGES = {
    "stage1": (7, 3, 32, 64),
    "stage2": (6, 64, 32, 128),
    "stage3": (5, 128, 64, 256),
    "stage4": (4, 256, 128, 512),
    "stage5": ("4F", 512, 256, 512),
    "stage6": ("4F", 512, 256, 512),
    "stage5d": ("4F", 1024, 256, 512),
    "stage4d": (4, 1024, 128, 256),
    "stage3d": (5, 512, 64, 128),
    "stage2d": (6, 256, 32, 64),
    "stage1d": (7, 128, 16, 64),
}
U2NET_SIDES = {"side1": 64, "side2": 64, "side3": 128, "side4": 256, "side5": 512, "side6": 512}
U2NETP_STAGES = {
    "stage1": (7, 3, 16, 64),
    "stage2": (6, 64, 16, 64),
    "stage3": (5, 64, 16, 64),
    "stage4": (4, 64, 16, 64),
    "stage5": ("4F", 64, 16, 64),
    "stage6": ("4F", 64, 16, 64),
    "stage5d": ("4F", 128, 16, 64),
    "stage4d": (4, 128, 16, 64),
    "stage3d": (5, 128, 16, 64),
    "stage2d": (6, 128, 16, 64),
    "stage1d": (7, 128, 16, 64),
}
U2NETP_SIDES = dict.fromkeys(U2NET_SIDES, 64)
PUBLISHED = {"u2net": (U2NET_STAGES, U2NET_SIDES), "u2netp": (U2NETP_STAGES, U2NETP_SIDES)}
# Parameter counts of the authors' U2NET(3, 1) and U2NETP(3, 1), counted on their model/u2net.py in PyTorch
# (sum of p.numel() over parameters(); BatchNorm running statistics are buffers, not counted).
PARAMETERS = {"u2net": 44_009_869, "u2netp": 1_131_181}


def _rebnconv(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.conv_s1.weight": (cout, cin, 3, 3), f"{prefix}.conv_s1.bias": (cout,)}
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.bn_s1.{name}"] = (cout,)
    shapes[f"{prefix}.bn_s1.num_batches_tracked"] = ()
    return shapes


def published_state_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the authors' model and its tensor shape."""
    stages, sides = PUBLISHED[arch]
    shapes: dict[str, tuple[int, ...]] = {}
    for stage, (height, cin, mid, cout) in stages.items():
        levels = 4 if height == "4F" else height  # RSU-4F has RSU-4's layers, dilated instead of pooled
        layers = [("rebnconvin", cin, cout), ("rebnconv1", cout, mid)]
        layers += [(f"rebnconv{i}", mid, mid) for i in range(2, levels + 1)]
        layers += [(f"rebnconv{i}d", 2 * mid, mid) for i in range(levels - 1, 1, -1)]
        layers.append(("rebnconv1d", 2 * mid, cout))
        for name, a, b in layers:
            shapes.update(_rebnconv(f"{stage}.{name}", a, b))
    for side, cin in sides.items():
        shapes[f"{side}.weight"], shapes[f"{side}.bias"] = (1, cin, 3, 3), (1,)
    shapes["outconv.weight"], shapes["outconv.bias"] = (1, 6, 1, 1), (1,)
    return shapes


def published_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the authors' names, plausible BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_state_shapes(arch).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("bn_s1.weight"):
            state[key] = torch.rand(shape, generator=gen) * 0.5 + 0.75
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


@pytest.mark.parametrize("arch", ["u2netp", "u2net"])
def test_parameter_count_and_state_dict_match_the_published_model(arch):
    model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[arch]
    expected = published_state_shapes(arch)
    learned = [shape for key, shape in expected.items() if "running" not in key and "num_batches" not in key]
    assert sum(math.prod(shape) for shape in learned) == PARAMETERS[arch]
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same registration order as the original, too


def test_sample_of_the_original_key_names():
    keys = set(create_model("u2netp").state_dict())
    for key in (
        "stage1.rebnconvin.conv_s1.weight",
        "stage1.rebnconv7.bn_s1.running_mean",
        "stage1.rebnconv6d.conv_s1.bias",
        "stage5.rebnconv4.conv_s1.weight",
        "stage6.rebnconv1d.bn_s1.running_var",
        "stage5d.rebnconv3d.bn_s1.num_batches_tracked",
        "stage1d.rebnconv1d.conv_s1.weight",
        "side6.weight",
        "outconv.weight",
    ):
        assert key in keys, key
    assert "stage5.rebnconv5.conv_s1.weight" not in keys  # RSU-4F stops at rebnconv4


def test_dilations_follow_the_rsu_design():
    model = create_model("u2netp")
    rsu4f = [model.stage5.get_submodule(n).conv_s1.dilation[0] for n in ("rebnconv1", "rebnconv2", "rebnconv3")]
    rsu4f += [model.stage5.get_submodule(n).conv_s1.dilation[0] for n in ("rebnconv4", "rebnconv3d", "rebnconv2d")]
    assert rsu4f == [1, 2, 4, 8, 4, 2]
    assert model.stage1.rebnconv7.conv_s1.dilation == (2, 2)
    assert model.stage1.rebnconv6.conv_s1.dilation == (1, 1)
    assert model.stage4d.rebnconv4.conv_s1.dilation == (2, 2)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):
            assert module.padding == module.dilation  # keeps the size


@pytest.mark.parametrize("arch", ["u2netp", "u2net"])
def test_bare_published_state_dict_loads_strictly_through_the_checkpoint_loader(arch, tmp_path: Path):
    state = published_state_dict(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    loaded = load_checkpoint(path, arch=arch)
    assert loaded.arch == arch
    loaded_state = loaded.model.state_dict()
    assert set(loaded_state) == set(state)
    assert all(torch.equal(loaded_state[k], v) for k, v in state.items())
    loaded.model.load_state_dict(state, strict=True)
    assert not loaded.model.training


def test_state_dict_of_the_other_variant_is_refused(tmp_path: Path):
    path = tmp_path / "u2netp.pth"
    torch.save(published_state_dict("u2netp"), path)
    with pytest.raises(MoptError, match="does not fit architecture 'u2net'.*wrong shape"):
        load_checkpoint(path, arch="u2net")


@pytest.mark.parametrize("hw", [(64, 64), (65, 97), (33, 21), (1, 1)])
def test_alpha_has_the_input_size_and_is_a_probability(hw):
    torch.manual_seed(0)
    model = create_model("u2netp").eval()
    model.load_state_dict(published_state_dict("u2netp"))
    with torch.inference_mode():
        alpha = model(torch.randn(2, 3, *hw))
    assert alpha.shape == (2, 1, *hw)
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


def test_ceil_mode_pooling_and_side_heads_read_each_level():
    model = create_model("u2netp").eval()
    seen: dict[str, tuple[int, ...]] = {}
    for name in ("stage6", "side1", "side2", "side3", "side4", "side5", "side6"):
        model.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, name=name: seen.__setitem__(name, tuple(inputs[0].shape[-2:]))
        )
    with torch.inference_mode():
        outputs = model.side_outputs(torch.randn(1, 3, 65, 97))
    # ceil halving: 65 -> 33 -> 17 -> 9 -> 5 -> 3, 97 -> 49 -> 25 -> 13 -> 7 -> 4; stage6 reads pool(hx5)
    assert seen == {
        "stage6": (3, 4),
        "side1": (65, 97),
        "side2": (33, 49),
        "side3": (17, 25),
        "side4": (9, 13),
        "side5": (5, 7),
        "side6": (3, 4),
    }
    assert len(outputs) == 7 and all(o.shape == (1, 1, 65, 97) for o in outputs)


def test_forward_is_the_fused_side_output():
    model = create_model("u2netp").eval()
    model.load_state_dict(published_state_dict("u2netp", seed=1))
    x = torch.randn(1, 3, 40, 56)
    with torch.inference_mode():
        alpha = model(x)
        outputs = model.side_outputs(x)
        logits = model.side_logits(x)
        fused = torch.sigmoid(model.outconv(torch.cat(logits[1:], dim=1)))
    assert torch.equal(alpha, outputs[0])
    assert all(torch.equal(o, torch.sigmoid(d)) for o, d in zip(outputs, logits))
    assert torch.equal(fused, alpha)  # d0 = sigmoid(outconv([d1..d6]))


def test_inconsistent_widths_are_a_user_error():
    with pytest.raises(MoptError, match="encoder_mid needs 6 positive channel counts"):
        create_model("u2netp", encoder_mid=(16, 16))
    with pytest.raises(MoptError, match="decoder_out needs 5 positive channel counts"):
        create_model("u2netp", decoder_out=(64, 64, 64, 64, 0))


@pytest.fixture(scope="module")
def u2netp_export(tmp_path_factory: pytest.TempPathFactory):
    from optimize.export import onnx_from_checkpoint

    folder = tmp_path_factory.mktemp("u2netp")
    model = create_model("u2netp")
    model.load_state_dict(published_state_dict("u2netp", seed=2))
    checkpoint = save_checkpoint(model, folder / "u2netp.pth")
    return checkpoint, onnx_from_checkpoint(checkpoint, folder / "u2netp.onnx")


def test_onnx_export_agrees_with_pytorch_at_odd_sizes(u2netp_export):
    import onnxruntime as ort

    from optimize.export import EXPORT_ATOL, INPUT_NAME, VERIFY_SHAPES

    checkpoint, result = u2netp_export
    assert [c["shape"] for c in result.checks] == [list(s) for s in VERIFY_SHAPES]
    assert all(c["max_abs"] <= EXPORT_ATOL for c in result.checks)
    model = load_checkpoint(checkpoint).model
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 65, 97), (2, 3, 33, 20)):
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        assert got.shape == (shape[0], 1, *shape[2:])
        assert float(np.abs(got - expected).max()) <= EXPORT_ATOL


def test_onnx_graph_keeps_ceil_mode_pools_and_dynamic_sizes(u2netp_export):
    _, result = u2netp_export
    graph = onnx.load(str(result.path)).graph
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 33  # 5 between stages, 5+4+3+2 inside stage1..4, 2+3+4+5 inside stage4d..1d
    for node in pools:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["ceil_mode"] == 1 and attrs["kernel_shape"] == [2, 2] and attrs["strides"] == [2, 2]
    dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
