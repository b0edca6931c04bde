"""Training: data-folder validation, a few steps that reduce the loss, determinism, resume, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import architectures
from optimize.checkpoint import IMAGENET, load_checkpoint
from optimize.cli import train as train_cli
from optimize.errors import MoptError
from optimize.synthetic import synthetic_sample, write_synthetic_folder
from optimize.train import (
    AugmentedPairs,
    checkpoint_from_training,
    evaluate_iou,
    find_pairs,
    load_pairs,
    matting_loss,
    synthetic_training_samples,
)

TINY = {"arch": "cvunet-tiny", "size": (32, 32), "batch_size": 4, "threads": 1, "validation": 4}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pairs")
    write_synthetic_folder(folder, 12, (40, 48), seed=5)
    return folder


# ------------------------------------------------------------------------------------------ data folders


def test_find_pairs_matches_by_stem(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "alphas").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cat.jpg")
    Image.new("L", (8, 8)).save(tmp_path / "alphas" / "cat.png")
    assert find_pairs(tmp_path) == [(tmp_path / "images" / "cat.jpg", tmp_path / "alphas" / "cat.png")]


def test_load_pairs_reads_rgba_cutouts_and_16_bit_alphas(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "alphas").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "images" / "a.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 51)).save(tmp_path / "alphas" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "b.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "alphas" / "b.png")
    (rgb_a, alpha_a), (_, alpha_b) = load_pairs(tmp_path)
    assert rgb_a[0, 0].tolist() == [10, 20, 30]
    np.testing.assert_allclose(alpha_a, 0.2, atol=1e-6)
    np.testing.assert_allclose(alpha_b, 1.0)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing_alphas_dir", "no alphas/ sub-folder"),
        ("empty", "no images"),
        ("unmatched", "unmatched training pairs"),
        ("corrupt_image", "cannot read image"),
        ("corrupt_alpha", "cannot read alpha matte"),
        ("size_mismatch", "resize the alpha to match"),
    ],
)
def test_bad_data_folders_raise_and_write_nothing(tmp_path: Path, layout: str, message: str) -> None:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    if layout != "missing_alphas_dir":
        (data / "alphas").mkdir()
    if layout in ("missing_alphas_dir", "unmatched", "corrupt_image", "corrupt_alpha", "size_mismatch"):
        Image.new("RGB", (16, 16)).save(data / "images" / "a.png")
    if layout == "unmatched":
        Image.new("L", (16, 16)).save(data / "alphas" / "b.png")
    if layout == "corrupt_image":
        (data / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        Image.new("L", (16, 16)).save(data / "alphas" / "a.png")
    if layout == "corrupt_alpha":
        (data / "alphas" / "a.png").write_bytes(b"garbage")
    if layout == "size_mismatch":
        Image.new("L", (16, 12)).save(data / "alphas" / "a.png")
    out = tmp_path / "model.pth"
    with pytest.raises(MoptError, match=message):
        checkpoint_from_training(out, data=data, epochs=1, **TINY)
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp*"))


def test_options_are_validated_before_training(tmp_path: Path) -> None:
    out = tmp_path / "model.pth"
    with pytest.raises(MoptError, match="exactly one training source"):
        checkpoint_from_training(out, epochs=1, **TINY)
    with pytest.raises(MoptError, match="exactly one training source"):
        checkpoint_from_training(out, data=tmp_path, synthetic=4, epochs=1, **TINY)
    with pytest.raises(MoptError, match="unknown architecture"):
        checkpoint_from_training(out, synthetic=4, epochs=1, **{**TINY, "arch": "resnet"})
    with pytest.raises(MoptError, match=r"\.pth"):
        checkpoint_from_training(tmp_path / "model.onnx", synthetic=4, epochs=1, **TINY)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ pieces


def test_augmented_pairs_are_deterministic_per_epoch() -> None:
    samples = [synthetic_sample(i, 40, 40) for i in range(2)]
    dataset = AugmentedPairs(samples, (32, 32), IMAGENET, seed=1)
    x1, y1 = dataset[0]
    assert x1.shape == (3, 32, 32) and y1.shape == (1, 32, 32)
    assert 0.0 <= float(y1.min()) and float(y1.max()) <= 1.0
    torch.testing.assert_close(dataset[0][0], x1)
    dataset.epoch = 1
    assert not torch.equal(dataset[0][0], x1)


def test_synthetic_training_samples_span_the_scale_range() -> None:
    fixed = synthetic_training_samples(3, (32, 32))
    assert {a.shape for _, a in fixed} == {(40, 40)}  # crop * CROP_MARGIN
    scaled = synthetic_training_samples(12, (32, 32), max_scale=3.0)
    sides = [a.shape[0] for _, a in scaled]
    assert min(sides) >= 40 and max(sides) <= 120 and len(set(sides)) > 4
    assert [a.shape for _, a in synthetic_training_samples(12, (32, 32), max_scale=3.0)] == [a.shape for _, a in scaled]
    with pytest.raises(MoptError, match="max-scale"):
        synthetic_training_samples(1, (32, 32), max_scale=0.5)


def test_matting_loss_is_zero_only_for_a_perfect_match() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1.0
    perfect = matting_loss(target.clone(), target)
    assert float(perfect) < 1e-6
    assert float(matting_loss(torch.full_like(target, 0.5), target)) > float(perfect) + 0.5


def test_evaluate_iou_scores_a_perfect_and_a_flat_model() -> None:
    samples = [synthetic_sample(i, 32, 32) for i in range(3)]

    class Oracle(torch.nn.Module):
        def __init__(self, alpha: float | None) -> None:
            super().__init__()
            self.alpha = alpha
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            assert not self.training, "validation must run in eval mode (BatchNorm running statistics)"
            if self.alpha is not None:
                return torch.full((x.shape[0], 1, *x.shape[2:]), self.alpha)
            return torch.from_numpy(np.stack([a for _, a in samples[: x.shape[0]]]))[:, None]

    perfect = Oracle(None).train()
    metrics = evaluate_iou(perfect, samples)
    assert metrics["iou"] == pytest.approx(1.0) and metrics["mad"] == pytest.approx(0.0) and metrics["count"] == 3
    assert perfect.training, "evaluate_iou restores the training mode"
    flat = evaluate_iou(Oracle(0.0), samples)
    assert flat["iou"] == pytest.approx(0.0)
    assert flat["mad"] == pytest.approx(float(np.mean([a.mean() for _, a in samples])), rel=1e-5)


# ------------------------------------------------------------------------------------------ training


def test_training_reduces_loss_and_records_itself(tmp_path: Path) -> None:
    out = tmp_path / "model.pth"
    steps: list[float] = []
    reports = []
    result = checkpoint_from_training(
        out, synthetic=16, epochs=4, lr=1e-2, seed=0, command="mopt train --synthetic 16",
        on_step=lambda step, total, loss: steps.append(loss), on_epoch=reports.append, **TINY,
    )
    assert out.is_file() and result.path == out
    assert len(steps) == 4 * 4 and [r.epoch for r in reports] == [1, 2, 3, 4]
    assert reports[-1].train_loss < reports[0].train_loss
    loaded = load_checkpoint(out)
    assert loaded.arch == "cvunet-tiny"
    record = loaded.extra["train"]
    assert record["command"] == "mopt train --synthetic 16"
    assert record["seed"] == 0 and record["epochs"] == 4 and record["synthetic"] == 16
    assert record["val_iou"] == pytest.approx(result.val_iou, abs=1e-5)
    assert record["val_count"] == 4 and len(record["history"]) == 4 and record["date"]


def test_training_is_deterministic_by_seed(tmp_path: Path) -> None:
    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        checkpoint_from_training(tmp_path / name, synthetic=8, epochs=1, seed=seed, **TINY)
        return load_checkpoint(tmp_path / name).model.state_dict()

    a, b, c = weights(0, "a.pth"), weights(0, "b.pth"), weights(1, "c.pth")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_training_on_a_folder_holds_out_pairs(tmp_path: Path, data_dir: Path) -> None:
    result = checkpoint_from_training(tmp_path / "model.pth", data=data_dir, epochs=1, **TINY)
    assert result.val_count == 1  # 10% of 12 pairs
    record = load_checkpoint(tmp_path / "model.pth").extra["train"]
    assert record["pairs"] == 12 and record["holdout"] == 1


def test_resume_from_init_keeps_arch_and_starts_from_its_weights(tmp_path: Path) -> None:
    first = tmp_path / "first.pth"
    checkpoint_from_training(first, synthetic=8, epochs=2, lr=1e-2, **TINY)
    start = load_checkpoint(first)
    with pytest.raises(MoptError, match="holds architecture"):
        checkpoint_from_training(tmp_path / "x.pth", synthetic=8, init=first, **{**TINY, "arch": "cvunet-mbv3-small"})
    # With a vanishing learning rate the resumed model stays at the initial weights: it really started there.
    resumed = tmp_path / "resumed.pth"
    tiny_no_arch = {k: v for k, v in TINY.items() if k != "arch"}
    checkpoint_from_training(resumed, synthetic=8, epochs=1, lr=1e-12, init=first, **tiny_no_arch)
    loaded = load_checkpoint(resumed)
    record = loaded.extra["train"]
    assert loaded.arch == "cvunet-tiny" and record["init"] == str(first)
    # The fine-tune carries its starting point's identity and training record.
    assert record["init_sha256"] == start.sha256
    assert record["init_train"]["command"] == start.extra["train"]["command"]
    fresh = architectures.create_model("cvunet-tiny").state_dict()
    for key, value in start.model.state_dict().items():
        if key.endswith("weight") and value.ndim == 4:
            torch.testing.assert_close(loaded.model.state_dict()[key], value, atol=1e-6, rtol=0)
            assert not torch.equal(value, fresh[key])


# ------------------------------------------------------------------------------------------ CLI


def test_cli_trains_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "cli.pth"
    result = CliRunner().invoke(
        train_cli.app,
        ["--synthetic", "8", "--arch", "cvunet-tiny", "--size", "32x32", "--epochs", "1", "--batch", "4",
         "--threads", "1", "--validation", "2", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "val IoU@0.5" in result.output and out.is_file()
    command = load_checkpoint(out).extra["train"]["command"]
    assert command.startswith("mopt train --synthetic 8 --arch cvunet-tiny --size 32x32") and command.endswith(str(out))


def test_cli_user_errors_are_mopt_errors(tmp_path: Path) -> None:
    out = tmp_path / "cli.pth"
    result = CliRunner().invoke(train_cli.app, ["--arch", "cvunet-tiny", "-o", str(out)])
    assert isinstance(result.exception, MoptError) and "exactly one training source" in str(result.exception)
    result = CliRunner().invoke(train_cli.app, ["--synthetic", "4", "--size", "big", "-o", str(out)])
    assert isinstance(result.exception, MoptError) and "'big'" in str(result.exception)
    assert not out.exists()
