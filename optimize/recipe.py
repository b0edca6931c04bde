"""Precision recipes: which nodes must stay in FP32 for a reduced-precision model to stay within a matte budget.

``mopt debug precision`` measures and writes a recipe; ``mopt convert-precision``, ``mopt quantize`` and
``mopt build-engine`` read it with ``--recipe``. The file is plain JSON::

    {"format": "mopt-precision-recipe", "version": 1, "precision": "fp16" | "int8",
     "runtime": "onnxruntime" | "openvino",
     "budget": {"mad": 0.004}, "nodes_to_keep_fp32": [node names], "op_types_to_keep_fp32": [op types],
     "measured": {"mad": ..., "max_abs": ..., "mse": ...}, "baseline": {...},
     "steps": [{"step": 1, "action": "...", "description": "...", "kept_count": 3, "kept": [...],
                "metrics": {...}, "passed": true}],
     "source_onnx": "model.sim.onnx", "source_onnx_sha256": "...", "inputs": {...}, "minimal": true,
     "mopt_version": "..."}

Node names are those of the FP32 source ONNX; a recipe applied to another model is checked name by name.
``runtime`` says what measured the reduced models (ONNX Runtime's kernels or OpenVINO's: they round
differently, so a set of FP32 nodes that suffices on one may not on the other); a recipe without it was made
before the field existed, on ONNX Runtime. For ``openvino`` an ``fp16`` recipe means OpenVINO's reduced inference
precision (f16, or bf16 where the CPU has no f16: ``inputs.inference_precision`` says which).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimize import __version__
from optimize.errors import MoptError
from optimize.fileio import write_json

RECIPE_FORMAT = "mopt-precision-recipe"
RECIPE_VERSION = 1
PRECISIONS = ("fp16", "int8")
# What a recipe's measurements ran on; recipes written before the field existed were measured on ONNX Runtime.
RUNTIMES = ("onnxruntime", "openvino")
DEFAULT_RUNTIME = "onnxruntime"
# Metrics a budget may bound: all three are cheap, per-pixel and defined for any pair of mattes.
BUDGET_METRICS = ("mad", "max_abs", "mse")
# A step lists the kept nodes by name up to this many; larger sets (a bisection prefix, described by its last node)
# only by count, which keeps a 200-step recipe readable.
STEP_NAME_LIMIT = 16


@dataclass(frozen=True)
class Budget:
    """Upper bounds on matte metrics against the FP32 reference; a model passes when it meets all of them.

    Attributes:
        limits: metric name (``mad``, ``max_abs``, ``mse``) -> largest accepted value.
    """

    limits: dict[str, float]

    def __post_init__(self) -> None:
        if not self.limits:
            raise MoptError(
                f"a budget needs at least one metric; choose from {', '.join(BUDGET_METRICS)} (e.g. mad=0.004)"
            )
        for name, value in self.limits.items():
            if name not in BUDGET_METRICS:
                raise MoptError(f"budget metric {name!r} is unknown; choose from {', '.join(BUDGET_METRICS)}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise MoptError(f"budget {name}={value!r} must be a positive number (e.g. {name}=0.004)")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"mad=0.004"`` or ``"mad=1e-3,max_abs=4e-3"`` -> Budget."""
        limits: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise MoptError(f"budget {text!r} must be METRIC=VALUE[,METRIC=VALUE] (e.g. mad=0.004)")
            try:
                limits[name.strip().lower()] = float(value)
            except ValueError as exc:
                raise MoptError(f"budget value {value!r} for {name.strip()} is not a number (e.g. mad=0.004)") from exc
        return cls(limits)

    def passes(self, metrics: dict[str, float]) -> bool:
        """Whether every bounded metric is finite and within its limit (a NaN never passes)."""
        return all(math.isfinite(metrics.get(k, math.nan)) and metrics[k] <= v for k, v in self.limits.items())

    def violations(self, metrics: dict[str, float]) -> list[str]:
        """One ``"mad 5.1e-03 > 4.0e-03"`` line per metric out of budget."""
        return [
            f"{k} {metrics.get(k, math.nan):.2e} > {v:.1e}"
            for k, v in self.limits.items()
            if not (math.isfinite(metrics.get(k, math.nan)) and metrics[k] <= v)
        ]

    def describe(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.limits.items())


@dataclass
class RecipeStep:
    """One measurement of the search: which nodes were kept in FP32 and what the matte metric was."""

    step: int
    action: str
    description: str
    kept_count: int
    kept: list[str] | None
    metrics: dict[str, float]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "action": self.action,
            "description": self.description,
            "kept_count": self.kept_count,
            "kept": self.kept,
            "metrics": _finite_or_none(self.metrics),
            "passed": self.passed,
        }


@dataclass
class PrecisionRecipe:
    """Nodes (and op types) to keep in FP32 when converting a model to ``precision``.

    Attributes:
        precision: ``"fp16"`` or ``"int8"``.
        runtime: what the reduced models were measured on: ``"onnxruntime"`` or ``"openvino"``.
        budget: the matte budget the recipe was measured against.
        nodes_to_keep_fp32: node names of the source ONNX to leave in FP32 (not converted / not quantized).
        op_types_to_keep_fp32: op types to leave in FP32 everywhere.
        measured: metrics of the reduced model with the recipe applied (against the FP32 ONNX).
        baseline: metrics with nothing kept in FP32 beyond the converter's own rules.
        steps: the search, one entry per measurement.
        source_onnx: file name of the FP32 ONNX the recipe was measured on.
        source_onnx_sha256: its sha256.
        inputs: what the measurement ran on (images, size, count).
        minimal: True when every kept node was shown necessary (the search finished within its step limit).
    """

    precision: str
    budget: Budget
    nodes_to_keep_fp32: list[str] = field(default_factory=list)
    op_types_to_keep_fp32: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    steps: list[RecipeStep] = field(default_factory=list)
    source_onnx: str = ""
    source_onnx_sha256: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    minimal: bool = True
    mopt_version: str = __version__
    runtime: str = DEFAULT_RUNTIME

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise MoptError(f"recipe precision {self.precision!r} is unknown; choose from {', '.join(PRECISIONS)}")
        if self.runtime not in RUNTIMES:
            raise MoptError(f"recipe runtime {self.runtime!r} is unknown; choose from {', '.join(RUNTIMES)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECIPE_FORMAT,
            "version": RECIPE_VERSION,
            "precision": self.precision,
            "runtime": self.runtime,
            "budget": dict(self.budget.limits),
            "nodes_to_keep_fp32": list(self.nodes_to_keep_fp32),
            "op_types_to_keep_fp32": list(self.op_types_to_keep_fp32),
            "measured": _finite_or_none(self.measured),
            "baseline": _finite_or_none(self.baseline),
            "minimal": self.minimal,
            "steps": [s.to_dict() for s in self.steps],
            "source_onnx": self.source_onnx,
            "source_onnx_sha256": self.source_onnx_sha256,
            "inputs": self.inputs,
            "mopt_version": self.mopt_version,
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str = "recipe") -> PrecisionRecipe:
        """Validate a parsed recipe; every problem is a one-line MoptError naming the field."""
        if not isinstance(data, dict):
            raise MoptError(f"{origin} is not a JSON object; write recipes with `mopt debug precision -o RECIPE.json`")
        if data.get("format") != RECIPE_FORMAT:
            raise MoptError(
                f"{origin} is not a mopt precision recipe (format {data.get('format')!r}, expected {RECIPE_FORMAT!r})"
            )
        if data.get("version") != RECIPE_VERSION:
            raise MoptError(
                f"{origin} has recipe version {data.get('version')!r}; this mopt reads version {RECIPE_VERSION}: "
                "re-run `mopt debug precision`"
            )
        budget = data.get("budget")
        if not isinstance(budget, dict):
            raise MoptError(f"{origin}: 'budget' must be an object like {{\"mad\": 0.004}}")
        steps = data.get("steps", [])
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise MoptError(f"{origin}: 'steps' must be a list of objects")
        try:
            parsed_steps = [
                RecipeStep(
                    step=int(s["step"]),
                    action=str(s["action"]),
                    description=str(s.get("description", "")),
                    kept_count=int(s["kept_count"]),
                    kept=_string_list(s.get("kept"), f"{origin}: steps[].kept") if s.get("kept") is not None else None,
                    metrics=_metric_dict(s.get("metrics", {}), f"{origin}: steps[].metrics"),
                    passed=bool(s["passed"]),
                )
                for s in steps
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise MoptError(
                f"{origin}: a step lacks or mistypes a field ({exc}); re-run `mopt debug precision`"
            ) from exc
        return cls(
            precision=str(data.get("precision")),
            runtime=str(data.get("runtime", DEFAULT_RUNTIME)),
            budget=Budget({str(k): v for k, v in budget.items()}),
            nodes_to_keep_fp32=_string_list(data.get("nodes_to_keep_fp32", []), f"{origin}: 'nodes_to_keep_fp32'"),
            op_types_to_keep_fp32=_string_list(
                data.get("op_types_to_keep_fp32", []), f"{origin}: 'op_types_to_keep_fp32'"
            ),
            measured=_metric_dict(data.get("measured", {}), f"{origin}: 'measured'"),
            baseline=_metric_dict(data.get("baseline", {}), f"{origin}: 'baseline'"),
            steps=parsed_steps,
            source_onnx=str(data.get("source_onnx", "")),
            source_onnx_sha256=str(data.get("source_onnx_sha256", "")),
            inputs=data.get("inputs", {}) if isinstance(data.get("inputs", {}), dict) else {},
            minimal=bool(data.get("minimal", True)),
            mopt_version=str(data.get("mopt_version", "")),
        )


def _finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN/Infinity: an overflowing model's metric is written as null.
    return {k: (float(v) if math.isfinite(v) else None) for k, v in metrics.items()}


def _metric_dict(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise MoptError(f"{what} must be an object of metric -> number")
    out = {}
    for k, v in value.items():
        if v is None:
            out[str(k)] = math.nan
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
        else:
            raise MoptError(f"{what}: {k}={v!r} is not a number")
    return out


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise MoptError(f"{what} must be a list of non-empty strings")
    return list(value)


def load_recipe(path: str | Path, precision: str | None = None) -> PrecisionRecipe:
    """Read and validate a recipe file.

    Args:
        path: the JSON file written by ``mopt debug precision``.
        precision: when given, the recipe must be for this precision (an INT8 recipe does not fit FP16).

    Raises:
        MoptError: missing or unreadable file, not a recipe, wrong version or precision, malformed fields.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise MoptError(f"recipe {path} does not exist; write one with `mopt debug precision ONNX -o {path}`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MoptError(f"cannot read recipe {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MoptError(f"recipe {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    recipe = PrecisionRecipe.from_dict(data, origin=f"recipe {path}")
    if precision is not None and recipe.precision != precision:
        raise MoptError(
            f"recipe {path} is for {recipe.precision}, not {precision}; "
            f"run `mopt debug precision ONNX --{precision} -o RECIPE.json` for a {precision} recipe"
        )
    return recipe


def save_recipe(recipe: PrecisionRecipe, path: str | Path) -> Path:
    """Write a recipe atomically (a crash never leaves half a recipe)."""
    return write_json(path, recipe.to_dict())


def recipe_exclusions(recipe: PrecisionRecipe, node_names: list[str], node_op_types: dict[str, str]) -> list[str]:
    """The node names of a model that ``recipe`` keeps in FP32: its nodes plus every node of its op types.

    Args:
        recipe: a loaded recipe.
        node_names: the names of the model's nodes.
        node_op_types: node name -> op type for the same model.

    Raises:
        MoptError: the recipe names a node the model does not have (it was measured on another graph).
    """
    present = set(node_names)
    missing = [n for n in recipe.nodes_to_keep_fp32 if n not in present]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MoptError(
            f"the recipe keeps nodes this model does not have ({shown}); it was measured on "
            f"{recipe.source_onnx or 'another model'}: re-run `mopt debug precision` on this ONNX"
        )
    by_type = [n for n in node_names if node_op_types.get(n) in set(recipe.op_types_to_keep_fp32)]
    return list(dict.fromkeys([*recipe.nodes_to_keep_fp32, *by_type]))
