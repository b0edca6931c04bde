import pickle

import pytest
import torch

from architectures import create_model
from optimize.checkpoint import IMAGENET, Normalization, load_checkpoint, save_checkpoint
from optimize.errors import MoptError


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_keeps_arch_config_normalization_and_weights(tmp_path, suffix):
    model = create_model("cvunet-tiny", decoder_channels=(16, 16, 8, 8, 4))
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    path = save_checkpoint(model, tmp_path / f"m{suffix}", normalization=norm, extra={"note": "x"})
    loaded = load_checkpoint(path)
    assert loaded.arch == "cvunet-tiny"
    assert loaded.config.decoder_channels == (16, 16, 8, 8, 4)
    assert loaded.normalization == norm
    assert loaded.extra == {"note": "x"}
    assert len(loaded.sha256) == 64
    assert _same_weights(model, loaded.model)
    assert not loaded.model.training


def test_bare_state_dict_needs_arch(tmp_path):
    model = create_model("cvunet-tiny")
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(MoptError, match="bare state dict.*--arch"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, arch="cvunet-tiny")
    assert _same_weights(model, loaded.model)
    assert loaded.normalization == IMAGENET


def test_wrong_architecture_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(create_model("cvunet-tiny").state_dict(), path)
    with pytest.raises(MoptError) as info:
        load_checkpoint(path, arch="unet-classic")
    message = str(info.value)
    assert "missing key(s)" in message and "unexpected key(s)" in message and "down.0" in message


def test_arch_flag_must_match_full_checkpoint(tmp_path):
    path = save_checkpoint(create_model("cvunet-tiny"), tmp_path / "m.pth")
    with pytest.raises(MoptError, match="holds architecture 'cvunet-tiny', not 'unet-classic'"):
        load_checkpoint(path, arch="unet-classic")


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(MoptError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pth")
    good = save_checkpoint(create_model("cvunet-tiny"), tmp_path / "m.pth")
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MoptError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(MoptError):
        load_checkpoint(text)
    fake_st = tmp_path / "x.safetensors"
    fake_st.write_bytes(b"\x00" * 64)
    with pytest.raises(MoptError, match="safetensors"):
        load_checkpoint(fake_st)
    not_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(MoptError, match="not a checkpoint dict"):
        load_checkpoint(not_dict)


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/mopt-pwned-marker", "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_refused_not_executed(tmp_path):
    marker = __import__("pathlib").Path("/tmp/mopt-pwned-marker")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"format": "mopt-checkpoint", "payload": _Exploit()}, f)
    with pytest.raises(MoptError, match="never unpickles objects|not a readable"):
        load_checkpoint(path)
    assert not marker.exists()


def test_newer_format_version_is_refused(tmp_path):
    path = save_checkpoint(create_model("cvunet-tiny"), tmp_path / "m.pth")
    data = torch.load(path, weights_only=True)
    data["format_version"] = 99
    torch.save(data, path)
    with pytest.raises(MoptError, match="format 99.*upgrade"):
        load_checkpoint(path)


def test_bad_suffix_writes_nothing(tmp_path):
    with pytest.raises(MoptError, match=r"\.pth, \.pt or \.safetensors"):
        save_checkpoint(create_model("cvunet-tiny"), tmp_path / "m.bin")
    assert list(tmp_path.iterdir()) == []
