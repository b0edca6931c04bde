"""Recipe JSON: round trip, validation with one-line errors, and name checks against a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from optimize.errors import MoptError
from optimize.recipe import (
    RECIPE_FORMAT,
    RECIPE_VERSION,
    Budget,
    PrecisionRecipe,
    RecipeStep,
    load_recipe,
    recipe_exclusions,
    save_recipe,
)


def _recipe(**overrides) -> PrecisionRecipe:
    fields = {
        "precision": "fp16",
        "budget": Budget({"mad": 0.004}),
        "nodes_to_keep_fp32": ["/decoder/Conv_3"],
        "op_types_to_keep_fp32": ["Resize"],
        "measured": {"mad": 1e-4, "max_abs": 2e-3, "mse": 1e-8},
        "baseline": {"mad": math.inf, "max_abs": math.inf, "mse": math.inf},
        "steps": [
            RecipeStep(1, "baseline", "nothing kept", 0, [], {"mad": math.nan}, False),
            RecipeStep(2, "bound", "all kept", 3, ["a", "b", "c"], {"mad": 0.0}, True),
        ],
        "source_onnx": "m.sim.onnx",
        "source_onnx_sha256": "ab" * 32,
        "inputs": {"images": "synthetic composites", "count": 4, "size": "256x256"},
    }
    return PrecisionRecipe(**{**fields, **overrides})


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = save_recipe(_recipe(), tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["format"] == RECIPE_FORMAT and data["version"] == RECIPE_VERSION
    assert data["baseline"]["mad"] is None  # JSON has no Infinity: an overflowing model's metric is null
    loaded = load_recipe(path, precision="fp16")
    assert loaded.nodes_to_keep_fp32 == ["/decoder/Conv_3"] and loaded.op_types_to_keep_fp32 == ["Resize"]
    assert loaded.budget.limits == {"mad": 0.004}
    assert loaded.measured == {"mad": 1e-4, "max_abs": 2e-3, "mse": 1e-8}
    assert math.isnan(loaded.baseline["mad"])
    assert [s.action for s in loaded.steps] == ["baseline", "bound"] and loaded.steps[1].kept == ["a", "b", "c"]
    assert loaded.source_onnx_sha256 == "ab" * 32 and loaded.minimal
    assert data["runtime"] == "onnxruntime" and loaded.runtime == "onnxruntime"


def test_runtime_round_trips_and_old_recipes_read_as_onnxruntime(tmp_path: Path) -> None:
    path = save_recipe(_recipe(runtime="openvino"), tmp_path / "ov.json")
    assert json.loads(path.read_text())["runtime"] == "openvino"
    assert load_recipe(path).runtime == "openvino"
    # A recipe written before the field existed was measured on ONNX Runtime.
    data = _recipe().to_dict()
    del data["runtime"]
    assert load_recipe(_write(tmp_path, data)).runtime == "onnxruntime"


def test_budget_parsing() -> None:
    assert Budget.parse("mad=0.004").limits == {"mad": 0.004}
    assert Budget.parse("MAD=1e-3, max_abs=4e-3").limits == {"mad": 1e-3, "max_abs": 4e-3}
    budget = Budget.parse("mad=1e-3,max_abs=4e-3")
    assert budget.passes({"mad": 1e-3, "max_abs": 4e-3})
    assert not budget.passes({"mad": 1e-3, "max_abs": 5e-3})
    assert budget.violations({"mad": 2e-3, "max_abs": 1e-3}) == ["mad 2.00e-03 > 1.0e-03"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mad", "METRIC=VALUE"),
        ("mad=abc", "not a number"),
        ("sad=0.1", "unknown"),
        ("mad=-1", "positive"),
        ("mad=nan", "positive"),
        ("", "at least one metric"),
    ],
)
def test_bad_budgets_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(MoptError, match=message) as info:
        Budget.parse(text)
    assert "\n" not in str(info.value)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="something"), "not a mopt precision recipe"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.update(precision="int4"), "precision 'int4' is unknown"),
        (lambda d: d.update(runtime="tensorrt"), "runtime 'tensorrt' is unknown.*onnxruntime, openvino"),
        (lambda d: d.update(budget=0.004), "'budget' must be an object"),
        (lambda d: d.update(budget={"mad": "x"}), "must be a positive number"),
        (lambda d: d.update(nodes_to_keep_fp32="a,b"), "list of non-empty strings"),
        (lambda d: d.update(nodes_to_keep_fp32=["a", ""]), "list of non-empty strings"),
        (lambda d: d.update(measured={"mad": "low"}), "is not a number"),
        (lambda d: d.update(steps=[{"step": 1}]), "a step lacks or mistypes a field"),
    ],
)
def test_malformed_recipes_are_refused(tmp_path: Path, mutate, message: str) -> None:  # noqa: ANN001
    data = _recipe().to_dict()
    mutate(data)
    with pytest.raises(MoptError, match=message) as info:
        load_recipe(_write(tmp_path, data))
    assert "\n" not in str(info.value)


def test_unreadable_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(MoptError, match="does not exist"):
        load_recipe(tmp_path / "missing.json")
    with pytest.raises(MoptError, match="not valid JSON"):
        load_recipe(_write(tmp_path, "{nope"))
    with pytest.raises(MoptError, match="not a JSON object"):
        load_recipe(_write(tmp_path, [1, 2]))


def test_precision_must_match(tmp_path: Path) -> None:
    path = save_recipe(_recipe(precision="int8"), tmp_path / "r.json")
    with pytest.raises(MoptError, match="is for int8, not fp16"):
        load_recipe(path, precision="fp16")


def test_exclusions_are_checked_against_the_model() -> None:
    names = ["/encoder/Conv", "/decoder/Conv_3", "/Resize", "/Resize_1"]
    types = {"/encoder/Conv": "Conv", "/decoder/Conv_3": "Conv", "/Resize": "Resize", "/Resize_1": "Resize"}
    assert recipe_exclusions(_recipe(), names, types) == ["/decoder/Conv_3", "/Resize", "/Resize_1"]
    with pytest.raises(MoptError, match="does not have \\(/decoder/Conv_3\\).*re-run `mopt debug precision`"):
        recipe_exclusions(_recipe(), ["/encoder/Conv"], {"/encoder/Conv": "Conv"})


def test_saving_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    save_recipe(_recipe(), path)
    before = path.read_text()

    def explode(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", explode)
    with pytest.raises(OSError, match="disk full"):
        save_recipe(_recipe(nodes_to_keep_fp32=["x"]), path)
    monkeypatch.undo()
    assert path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
