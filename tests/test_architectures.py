import pytest
import torch

import architectures
from architectures import create_model, list_models, model_config
from architectures.blocks import DepthwiseSeparableDecoderBlock, make_divisible
from optimize.errors import MoptError
from optimize.modelinfo import info_from_model


def test_registry_lists_every_variant():
    expected = {"cvunet-mbv3-large", "cvunet-mbv3-large-s2", "cvunet-mbv3-small", "cvunet-tiny", "unet-classic"}
    assert expected <= set(list_models())


@pytest.mark.parametrize("name", ["cvunet-mbv3-large", "cvunet-mbv3-large-s2", "cvunet-mbv3-small", "cvunet-tiny"])
@pytest.mark.parametrize("hw", [(64, 64), (37, 53), (97, 33)])
def test_cvunet_returns_alpha_of_input_size(name, hw):
    model = create_model(name).eval()
    with torch.inference_mode():
        alpha = model(torch.randn(2, 3, *hw))
    assert alpha.shape == (2, 1, *hw)
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0


def test_unet_classic_odd_size_and_is_tens_of_millions():
    model = create_model("unet-classic", base_channels=8).eval()
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 45, 61)).shape == (1, 1, 45, 61)
    full = create_model("unet-classic")
    assert sum(p.numel() for p in full.parameters()) > 20_000_000


def test_encoder_stage_channels_and_strides():
    model = create_model("cvunet-mbv3-large")
    assert model.encoder.out_channels == [16, 24, 40, 112, 960]
    features = model.encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]


def test_width_multiplier_shrinks_model():
    full = sum(p.numel() for p in create_model("cvunet-mbv3-large").parameters())
    half = sum(p.numel() for p in create_model("cvunet-mbv3-large", width_mult=0.5).parameters())
    assert half < 0.5 * full


def test_decoder_block_order_is_dw_pw_se_bn_relu6():
    block = DepthwiseSeparableDecoderBlock(16, 8, se_reduction=8)
    names = [name for name, _ in block.named_children()]
    assert names == ["depthwise", "pointwise", "se", "bn", "act"]
    assert block.depthwise.groups == 16 and block.depthwise.kernel_size == (3, 3)
    assert block.se.reduce.out_channels == 4  # max(4, 8 // 8)
    assert isinstance(block.act, torch.nn.ReLU6)


def test_stride2_variant_stops_decoding_at_half_resolution():
    full = create_model("cvunet-mbv3-large")
    half = create_model("cvunet-mbv3-large-s2").eval()
    assert len(full.decoder) == 5 and len(half.decoder) == 4
    seen = []
    half.head.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.inference_mode():
        assert half(torch.randn(1, 3, 65, 47)).shape == (1, 1, 65, 47)
    assert seen == [(1, 1, 33, 24)]  # the stride-2 skip's size; the logits are then upsampled
    assert info_from_model(half, 256, 256).gflops < 0.9 * info_from_model(full, 256, 256).gflops


def test_inconsistent_cvunet_config_is_a_user_error():
    with pytest.raises(MoptError, match="output_stride must be 1 or 2"):
        create_model("cvunet-tiny", output_stride=4)
    with pytest.raises(MoptError, match="decoder_channels needs 4 entries for output_stride 2"):
        create_model("cvunet-tiny", output_stride=2)


def test_config_without_output_stride_builds_the_full_resolution_decoder():
    # Checkpoints written before output_stride existed store no such field.
    stored = architectures.config_to_dict(model_config("cvunet-tiny"))
    del stored["output_stride"]
    assert len(create_model("cvunet-tiny", **stored).decoder) == 5


def test_make_divisible():
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(72 * 0.75) == 56


def test_unknown_architecture_and_field_are_user_errors():
    with pytest.raises(MoptError, match="unknown architecture 'nope'.*cvunet-mbv3-large"):
        create_model("nope")
    with pytest.raises(MoptError, match="unknown config field"):
        model_config("cvunet-tiny", colour="red")


def test_config_round_trips_through_json_lists():
    config = architectures.config_to_dict(model_config("cvunet-mbv3-small"))
    assert isinstance(config["decoder_channels"], list)
    assert model_config("cvunet-mbv3-small", **config) == model_config("cvunet-mbv3-small")


def test_lightweight_unet_is_much_cheaper_than_classic():
    light = info_from_model(create_model("cvunet-mbv3-large"), 128, 128)
    classic = info_from_model(create_model("unet-classic"), 128, 128)
    assert classic.parameters > 5 * light.parameters
    assert classic.gflops > 20 * light.gflops
    assert light.encoder_channels == [16, 24, 40, 112, 960]
