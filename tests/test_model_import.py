"""`mopt import`: every kind of foreign model through the whole pipeline, the trust rule, and bad input.

Each source (a user factory returning a dict of logits, U²-NetP with the authors' key names, an ONNX-only
model with a fixed 1x3x320x320 input and several outputs, an SMP Unet where the package imports) goes
import -> export/simplify -> FP16 -> compare (passes) -> a tampered ONNX (fails, exit 1) -> matte (outputs at
each input's exact size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from optimize.deps import is_available
from optimize.errors import MoptError
from optimize.model_import import import_model
from optimize.onnx_model import card_of_onnx

MOPT = [sys.executable, "-m", "optimize.cli.main"]
REPO = Path(__file__).resolve().parents[1]

FACTORY_SOURCE = textwrap.dedent(
    '''
    import torch
    from torch import nn
    import torch.nn.functional as F


    class DictUNet(nn.Module):
        """A two-level U-Net returning {"logits": N,1,H,W, "aux": N,1,H/2,W/2}."""

        def __init__(self, width=8):
            super().__init__()
            self.down = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.mid = nn.Conv2d(width, width, 3, padding=1)
            self.up = nn.Conv2d(width + 3, 1, 3, padding=1)
            self.aux = nn.Conv2d(width, 1, 1)

        def forward(self, x):
            d = F.relu(self.down(x))
            m = F.relu(self.mid(d))
            u = F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)
            return {"logits": self.up(torch.cat([u, x], 1)), "aux": self.aux(m)}


    def make_unet(width=8):
        return DictUNet(width)


    NOT_CALLABLE = 42


    def not_a_module(width=8):
        return "a string"
    '''
)


def run_mopt(*args: object, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH", "")]))
    return subprocess.run([*MOPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600, env=full_env)


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr + result.stdout
    assert len(lines) == 1 and lines[0].startswith("mopt: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def factory_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("factory")
    (folder / "byo_unet.py").write_text(FACTORY_SOURCE)
    return folder


@pytest.fixture
def factory_on_path(factory_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(factory_dir))
    monkeypatch.setenv("PYTHONPATH", str(factory_dir))
    sys.modules.pop("byo_unet", None)
    return factory_dir


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three images of odd, different sizes (one portrait), each with a bright blob on a darker background."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(97, 131), (150, 90), (64, 64)]):
        yy, xx = np.mgrid[0:h, 0:w]
        blob = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2)[..., None]
        rgb = np.where(blob, 200, 40) + rng.integers(0, 30, (h, w, 3))
        Image.fromarray(rgb.astype(np.uint8)).save(folder / f"p{i}.jpg")
    return folder


def matte_sizes_match(outdir: Path, photos: Path) -> None:
    for photo in photos.glob("*.jpg"):
        with Image.open(photo) as src, Image.open(outdir / f"{photo.stem}.png") as out:
            assert out.size == src.size


def tampered(path: Path, out: Path) -> Path:
    """The same graph with its largest weight tensor scaled: loads and runs, computes something else."""
    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(biggest).astype(np.float32) * 1.5
    biggest.CopyFrom(numpy_helper.from_array(weights.astype(numpy_helper.to_array(biggest).dtype), biggest.name))
    onnx.save(model, str(out))
    return out


def pipeline_after_import(onnx_path: Path, work: Path, photos: Path, reference: list[str], env: dict | None = None):
    """FP16 -> compare passes -> tampered FP32 fails compare -> matte writes outputs at the inputs' sizes."""
    from optimize.precision import fp16_onnx_from_onnx

    fp16 = fp16_onnx_from_onnx(onnx_path, work / f"{onnx_path.stem}.fp16.onnx")
    card = card_of_onnx(onnx_path)
    size = [] if card.size.fixed else ["--size", "96x128"]
    ok = run_mopt("compare", *reference, "--onnx", onnx_path, "--onnx", fp16, "--count", 2, *size, cwd=work, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "FAIL" not in ok.stdout
    bad = tampered(onnx_path, work / "tampered.onnx")
    failed = run_mopt("compare", *reference, "--onnx", bad, "--count", 2, *size, cwd=work, env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL" in failed.stdout
    if card.is_matte:
        out = work / "mattes"
        matted = run_mopt("matte", photos, "-o", out, "--onnx", onnx_path, "--output", "alpha", cwd=work, env=env)
        assert matted.returncode == 0, matted.stdout + matted.stderr
        matte_sizes_match(out, photos)


# --- sources ---------------------------------------------------------------------------------------------------


def test_factory_with_dict_logits_goes_through_the_pipeline(factory_on_path, tmp_path, photos):
    torch.manual_seed(0)
    sys.path.insert(0, str(factory_on_path))
    import byo_unet

    weights = tmp_path / "weights.pth"
    # A DataParallel training script's file: {"model": state dict with the "module." prefix, "epoch": ...}.
    state = {f"module.{k}": v for k, v in byo_unet.make_unet(width=8).state_dict().items()}
    torch.save({"model": state, "epoch": 3}, weights)
    result = import_model(
        weights,
        tmp_path / "byo.pth",
        arch="byo_unet:make_unet",
        arch_args={"width": 8},
        card_changes={"output": "logits", "activation": "sigmoid"},
    )
    assert result.card.arch == "byo_unet:make_unet" and result.card.output == "logits"
    assert result.probe_shape[1] == 1
    env = {"PYTHONPATH": str(factory_on_path)}
    # Later stages name the factory with --arch: the user trusts it.
    exported = run_mopt(
        "export", result.path, "--arch", "byo_unet:make_unet", "-o", tmp_path / "byo.onnx", cwd=tmp_path, env=env
    )
    assert exported.returncode == 0, exported.stderr
    onnx_path = tmp_path / "byo.onnx"
    card = card_of_onnx(onnx_path)
    assert [o.name for o in onnx.load(str(onnx_path)).graph.output] == ["alpha"] and card.activation == "none"
    reference = ["-c", str(result.path), "--arch", "byo_unet:make_unet"]
    pipeline_after_import(onnx_path, tmp_path, photos, reference, env)


def test_u2netp_state_dict_with_the_authors_key_names(tmp_path, photos):
    from architectures import create_model

    torch.manual_seed(0)
    state = create_model("u2netp").state_dict()
    assert "stage1.rebnconvin.conv_s1.weight" in state and "outconv.weight" in state
    weights = tmp_path / "u2netp.pth"
    torch.save({"state_dict": state}, weights)
    result = import_model(weights, tmp_path / "u2netp.mopt.pth", arch="u2netp")
    assert result.card.arch == "u2netp" and result.probe_shape == (1, 1, 64, 96)
    direct = import_model(weights, tmp_path / "u2netp.direct.onnx", arch="u2netp").path
    assert card_of_onnx(direct).arch == "u2netp"
    from optimize.export import onnx_from_checkpoint

    onnx_path = onnx_from_checkpoint(result.path, tmp_path / "u2netp.onnx").path
    pipeline_after_import(onnx_path, tmp_path, photos, ["-c", str(result.path)])
    # The ONNX imported straight from the weights descends from them, not from the .pth imported beside it.
    mismatch = run_mopt("compare", "-c", result.path, "--onnx", direct, "--count", 1, "--size", "64x64", cwd=tmp_path)
    one_line_error(mismatch, "made from another model", "--allow-mismatch")
    allowed = run_mopt(
        "compare",
        "-c",
        result.path,
        "--onnx",
        direct,
        "--count",
        1,
        "--size",
        "64x64",
        "--allow-mismatch",
        cwd=tmp_path,
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


@pytest.fixture(scope="session")
def rembg_like_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX-only model like rembg's u2net.onnx: input ``input.1`` fixed at 1x3x320x320, seven outputs."""

    class SevenOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.heads = torch.nn.ModuleList(torch.nn.Conv2d(4, 1, 1) for _ in range(7))

        def forward(self, x: torch.Tensor):
            f = torch.relu(self.body(x))
            return tuple(torch.sigmoid(h(f)) for h in self.heads)

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("rembg") / "u2net-like.onnx"
    with torch.inference_mode():
        torch.onnx.export(
            SevenOutputs().eval(),
            (torch.zeros(1, 3, 320, 320),),
            str(path),
            input_names=["input.1"],
            output_names=[f"d{i}" for i in range(7)],
            opset_version=17,
            dynamo=False,
        )
    return path


def test_onnx_only_model_with_several_outputs(rembg_like_onnx, tmp_path, photos):
    before = rembg_like_onnx.read_bytes()
    result = import_model(rembg_like_onnx, tmp_path / "u2net.mopt.onnx", card_changes={"normalization": "imagenet"})
    assert rembg_like_onnx.read_bytes() == before  # inputs are never modified
    card = result.card
    assert card.input_name == "input.1" and card.size.fixed == (320, 320) and card.output_name == "d0"
    assert any("7 outputs" in n for n in result.notes)
    model = onnx.load(str(result.path))
    assert [o.name for o in model.graph.output] == ["d0"]
    assert card.batch is None  # a conv-only graph runs at any batch: the import made it dynamic
    pipeline_after_import(result.path, tmp_path, photos, ["--reference", str(result.path)])


def test_onnx_output_can_be_picked_by_index_and_gets_its_sigmoid(rembg_like_onnx, tmp_path):
    result = import_model(rembg_like_onnx, tmp_path / "d3.onnx", card_changes={"output": "3", "activation": "sigmoid"})
    model = onnx.load(str(result.path))
    assert model.graph.node[-1].op_type == "Sigmoid" and model.graph.node[-1].input == ["d3"]
    assert len(model.graph.output) == 1 and result.card.output_name == model.graph.output[0].name


@pytest.mark.skipif(
    not is_available("segmentation_models_pytorch"),
    reason="segmentation_models_pytorch is not importable here (it needs torchvision, which has no CPU build for "
    "this torch); pip install 'mopt[smp]' with a matching torchvision",
)
def test_smp_unet_with_a_small_encoder(tmp_path, photos):
    import segmentation_models_pytorch as smp

    model = smp.Unet(encoder_name="mobilenet_v2", encoder_weights=None, classes=1)
    weights = tmp_path / "smp.pth"
    torch.save(model.state_dict(), weights)
    args = {"encoder_name": "mobilenet_v2", "classes": 1}
    result = import_model(weights, tmp_path / "smp.mopt.pth", arch="smp:Unet", arch_args=args)
    assert result.card.size.multiple == 32 and result.card.activation == "sigmoid"
    from optimize.export import onnx_from_checkpoint

    onnx_path = onnx_from_checkpoint(result.path, tmp_path / "smp.onnx").path
    pipeline_after_import(onnx_path, tmp_path, photos, ["-c", str(result.path)])


def test_entry_point_architectures_are_registered(tmp_path):
    """An installed package declares its architectures in the `mopt.architectures` entry-point group."""
    package = tmp_path / "site"
    (package / "thirdparty_unets").mkdir(parents=True)
    (package / "thirdparty_unets" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from torch import nn
            from architectures.registry import register_model

            @dataclass(frozen=True)
            class Config:
                width: int = 4

            @register_model("thirdparty-net", Config(), "a third-party U-Net")
            def build(config):
                conv = nn.Conv2d(3, config.width, 3, padding=1)
                return nn.Sequential(conv, nn.Conv2d(config.width, 1, 1), nn.Sigmoid())
            """
        )
    )
    dist = package / "thirdparty_unets-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-unets\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mopt.architectures]\nthirdparty = thirdparty_unets\n")
    listed = run_mopt("info", "--list", cwd=tmp_path, env={"PYTHONPATH": str(package)})
    assert listed.returncode == 0, listed.stderr
    assert "thirdparty-net" in listed.stdout


# --- trust -------------------------------------------------------------------------------------------------------


def checkpoint_naming(tmp_path: Path, arch: str) -> Path:
    path = tmp_path / "asks.pth"
    card = {"arch": arch, "arch_args": {"command": "touch pwned"}}
    header = {"format": "mopt-checkpoint", "format_version": 2, "arch": arch, "config": card["arch_args"]}
    torch.save({**header, "card": card, "state_dict": {"w": torch.zeros(1)}}, path)
    return path


def test_a_checkpoint_naming_a_factory_imports_nothing_untrusted(tmp_path):
    path = checkpoint_naming(tmp_path, "os:system")
    result = run_mopt("export", path, cwd=tmp_path)
    line = one_line_error(result, "os:system", "--arch os:system", "MOPT_TRUSTED_ARCHS=os")
    assert "Traceback" not in result.stderr and line
    assert not (tmp_path / "pwned").exists()
    assert not list((tmp_path / "engines").glob("*")) if (tmp_path / "engines").exists() else True


def test_trust_rule_in_process_never_imports_the_module(tmp_path, monkeypatch):
    from optimize.checkpoint import load_checkpoint

    monkeypatch.delenv("MOPT_TRUSTED_ARCHS", raising=False)
    path = checkpoint_naming(tmp_path, "mopt_never_imported_pkg.models:build")
    with pytest.raises(MoptError, match="trust"):
        load_checkpoint(path)
    assert "mopt_never_imported_pkg" not in sys.modules
    monkeypatch.setenv("MOPT_TRUSTED_ARCHS", "mopt_never_imported_pkg.models")
    with pytest.raises(MoptError, match="cannot import 'mopt_never_imported_pkg.models'"):
        load_checkpoint(path)  # trusted now, so it tries, and says the package is not installed


def test_environment_trust_loads_a_factory_checkpoint(factory_on_path, tmp_path, monkeypatch):
    import byo_unet

    from optimize.checkpoint import load_checkpoint

    weights = tmp_path / "w.pth"
    torch.save(byo_unet.make_unet(4).state_dict(), weights)
    path = import_model(
        weights,
        tmp_path / "m.pth",
        arch="byo_unet:make_unet",
        arch_args={"width": 4},
        card_changes={"output": "logits", "activation": "sigmoid"},
    ).path
    monkeypatch.delenv("MOPT_TRUSTED_ARCHS", raising=False)
    with pytest.raises(MoptError, match="MOPT_TRUSTED_ARCHS=byo_unet"):
        load_checkpoint(path)
    monkeypatch.setenv("MOPT_TRUSTED_ARCHS", "other,byo_unet")
    loaded = load_checkpoint(path)
    with torch.inference_mode():
        y = loaded.model(torch.zeros(1, 3, 32, 48))
    assert y.shape == (1, 1, 32, 48) and float(y.min()) >= 0 and float(y.max()) <= 1


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--arch", "byo_unet:make_unet", "--arch-args", '{"depth": 3}'], ["depth", "width"]),
        (["--arch", "byo_unet:NOT_CALLABLE"], ["int", "not a callable"]),
        (["--arch", "byo_unet:not_a_module"], ["str", "nn.Module"]),
        (["--arch", "byo_unet:make_unet", "--arch-args", '{"width": 16}'], ["does not fit", "wrong shape"]),
        (["--arch", "byo_unet:make_unet", "--arch-args", "[1, 2]"], ["JSON object"]),
        (["--arch", "byo_unet:make_unet", "--arch-args", "{width: 8}"], ["not valid JSON"]),
        (["--arch", "byo_unet:make_unet"], ["dict with keys", "--output"]),
    ],
)
def test_bad_factory_input_is_one_line_and_writes_nothing(factory_on_path, tmp_path, args, needles):
    sys.path.insert(0, str(factory_on_path))
    import byo_unet

    weights = tmp_path / "w.pth"
    torch.save(byo_unet.make_unet(width=8).state_dict(), weights)
    result = run_mopt(
        "import", weights, "-o", tmp_path / "out.pth", *args, cwd=tmp_path, env={"PYTHONPATH": str(factory_on_path)}
    )
    one_line_error(result, *needles)
    assert not (tmp_path / "out.pth").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left either


def test_onnx_with_no_float_image_input_is_refused(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, 16])
    y = helper.make_tensor_value_info("out", TensorProto.INT64, [1, 16])
    graph = helper.make_graph([helper.make_node("Identity", ["tokens"], ["out"])], "g", [x], [y])
    path = tmp_path / "text.onnx"
    onnx.save(helper.make_model(graph), str(path))
    result = run_mopt("import", path, "-o", tmp_path / "out.onnx", cwd=tmp_path)
    one_line_error(result, "no float N x 3 x H x W image input", "tokens")
    assert not (tmp_path / "out.onnx").exists()


def test_bare_weights_without_arch_and_unknown_output_are_one_line(rembg_like_onnx, tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, weights)
    one_line_error(run_mopt("import", weights, "-o", tmp_path / "o.pth", cwd=tmp_path), "--arch")
    result = run_mopt("import", rembg_like_onnx, "-o", tmp_path / "o.onnx", "--output", "mask", cwd=tmp_path)
    one_line_error(result, "'mask'", "d0")
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.pth").exists()


def test_image_to_image_model_is_compared_by_psnr_and_refused_by_matte(tmp_path, photos):
    """A 3-channel U-Net (e.g. cartoonization): export and compare work, matte refuses with one line."""

    class ImageNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    torch.manual_seed(0)
    source = tmp_path / "toon.onnx"
    with torch.inference_mode():
        torch.onnx.export(
            ImageNet().eval(),
            (torch.zeros(1, 3, 64, 64),),
            str(source),
            input_names=["img"],
            output_names=["toon"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"img": {0: "n", 2: "h", 3: "w"}, "toon": {0: "n", 2: "h", 3: "w"}},
        )
    result = import_model(source, tmp_path / "toon.mopt.onnx")
    assert result.card.output_channels == 3 and not result.card.is_matte
    compared = run_mopt(
        "compare",
        "--reference",
        result.path,
        "--onnx",
        result.path,
        "--size",
        "64x64",
        "--count",
        2,
        "--json",
        tmp_path / "c.json",
        cwd=tmp_path,
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["candidates"][0]["psnr"] is not None and "PSNR" in compared.stdout
    refused = run_mopt("matte", photos, "-o", tmp_path / "out", "--onnx", result.path, cwd=tmp_path)
    one_line_error(refused, "matting model", "3-channel")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bench_measures_a_fixed_size_model_at_its_size_and_refuses_another(rembg_like_onnx, tmp_path):
    result = import_model(rembg_like_onnx, tmp_path / "fixed.onnx")
    common = ["--onnx", result.path, "--backend", "onnxruntime", "--batch", 1, "--iterations", 1, "--warmup", 0]
    measured = run_mopt("bench", *common, "--json", tmp_path / "b.json", cwd=tmp_path)
    assert measured.returncode == 0, measured.stdout + measured.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert rows and all((r["height"], r["width"]) == (320, 320) for r in rows)
    one_line_error(run_mopt("bench", *common, "--size", "512x512", cwd=tmp_path), "512x512", "fixed at 320x320")


def test_import_of_mediapipe_tflite_through_the_cli(tmp_path):
    from optimize.checkpoint import load_checkpoint
    from optimize.tflite_import import bundled_tflite

    result = run_mopt("import", bundled_tflite(), "-o", tmp_path / "selfie.pth", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = load_checkpoint(tmp_path / "selfie.pth")
    assert loaded.arch == "mediapipe-selfie" and loaded.card.mean is None and loaded.card.preferred_side == 256
    refused = run_mopt("import", bundled_tflite(), "-o", tmp_path / "x.pth", "--bgr", cwd=tmp_path)
    one_line_error(refused, "drop the card options")
