"""Find the smallest set of nodes that must stay in FP32 for an FP16 or INT8 model to stay within a matte budget.

The search measures the reduced model against the FP32 ONNX on the same images (MAD by default) and bisects
over the candidate nodes in graph order:

1. Measure with nothing kept in FP32. Within budget: the recipe is empty.
2. Measure with every candidate kept. Over budget: no recipe can help (the budget is below FP32 noise).
3. With the nodes found so far kept, binary-search the shortest prefix of the remaining candidates that
   brings the model within budget; the prefix's last node is necessary, so it joins the found set. Repeat
   until the found set alone is within budget. Each search only looks below the previous prefix, so a node
   costs about log2(that prefix) measurements.
4. Prune: drop each found node whose removal keeps the model within budget, so every node left is necessary.

Every measurement is a step of the report (what was kept, the metrics, pass or fail), and the result is a
recipe that ``mopt convert-precision``, ``mopt quantize`` and ``mopt build-engine`` accept with ``--recipe``.

FP16 candidates are the float nodes AutoCast converts (the ones its own range rule keeps are kept anyway);
INT8 candidates are the weighted nodes the quantizer puts Q/DQ on. Both reduced models are measured as the
converters measure them: FP16 on ONNX Runtime and on the FP16 emulation (the worse counts), INT8 on ONNX
Runtime's CPU provider with the calibration ranges computed once.

``runtime="openvino"`` measures on OpenVINO instead, because its kernels round differently: INT8 runs the same
Q/DQ model through OpenVINO's CPU plugin; FP16 compiles the FP32 model with OpenVINO's reduced inference
precision (f16 where the CPU has it, else bf16) and keeps the candidate nodes in FP32 through the plugin's
per-node precision attribute (every float node is a candidate: no AutoCast is involved).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from optimize.artifacts import derived_path
from optimize.defaults import DEFAULT_BUDGET as DEFAULT_BUDGET  # one 8-bit alpha step on average
from optimize.defaults import DEFAULT_MAX_STEPS as DEFAULT_MAX_STEPS
from optimize.errors import MoptError
from optimize.fileio import file_sha256
from optimize.onnx_model import load_onnx, require_fp32_source, run_onnx
from optimize.precision import float_output_nodes, fp16_checks, fp16_model_from_onnx, fp32_nodes_of
from optimize.recipe import RUNTIMES, STEP_NAME_LIMIT, Budget, PrecisionRecipe, RecipeStep
from optimize.verification import DEFAULT_VERIFY_COUNT, accuracy_check, verification_inputs, worst_metrics

DEFAULT_INT8_SYNTHETIC = 16


class PrecisionEvaluator(ABC):
    """Builds the reduced model with some nodes kept in FP32 and measures it against the FP32 model."""

    precision: str
    candidates: list[str]
    always_fp32: list[str]

    @abstractmethod
    def measure(self, kept: Sequence[str]) -> dict[str, float]:
        """Metrics (``mad``, ``max_abs``, ``mse``) of the reduced model with ``kept`` nodes left in FP32."""


class Fp16Evaluator(PrecisionEvaluator):
    """FP16 via AutoCast; measured on ONNX Runtime CPU and on the FP16 emulation (the worse of the two).

    AutoCast's range rule (values beyond FP16's safe range stay FP32) is evaluated once on ``inputs``; its
    verdict is passed to every later conversion by name, which skips AutoCast's reference run per step.
    """

    precision = "fp16"

    def __init__(self, onnx_path: Path, inputs: np.ndarray, reference: np.ndarray, threads: int | None = None) -> None:
        self.onnx_path, self.inputs, self.reference, self.threads = onnx_path, inputs, reference, threads
        float_nodes = float_output_nodes(load_onnx(onnx_path))
        base = fp16_model_from_onnx(onnx_path, reference_inputs=inputs)
        self.always_fp32 = fp32_nodes_of(base, float_nodes)
        self.candidates = [n for n in float_nodes if n not in set(self.always_fp32)]

    def measure(self, kept: Sequence[str]) -> dict[str, float]:
        model = fp16_model_from_onnx(
            self.onnx_path, nodes_to_keep_fp32=[*self.always_fp32, *kept], autocast_rules=False
        )
        return worst_metrics(fp16_checks(self.onnx_path, model, self.inputs, self.reference, self.threads))


class Int8Evaluator(PrecisionEvaluator):
    """INT8 Q/DQ from calibration ranges computed once; measured on ONNX Runtime's CPU provider."""

    precision = "int8"

    def __init__(
        self,
        onnx_path: Path,
        inputs: np.ndarray,
        reference: np.ndarray,
        ranges: dict[str, tuple[float, float]],
        threads: int | None = None,
    ) -> None:
        from optimize.quantize import int8_candidates

        self.onnx_path, self.inputs, self.reference, self.ranges, self.threads = (
            onnx_path,
            inputs,
            reference,
            ranges,
            threads,
        )
        self.candidates = int8_candidates(load_onnx(onnx_path))
        self.always_fp32 = []

    def measure(self, kept: Sequence[str]) -> dict[str, float]:
        from optimize.quantize import qdq_model_from_ranges

        model = qdq_model_from_ranges(self.onnx_path, self.ranges, kept)
        output = run_onnx(model, self.inputs, threads=self.threads, label="INT8 model")
        return accuracy_check(self.reference, output, "onnxruntime-cpu").metrics()


class OpenVinoInt8Evaluator(Int8Evaluator):
    """The same INT8 Q/DQ models as :class:`Int8Evaluator`, measured on OpenVINO's CPU plugin."""

    def measure(self, kept: Sequence[str]) -> dict[str, float]:
        from optimize.backends.openvino import run_openvino
        from optimize.quantize import qdq_model_from_ranges

        model = qdq_model_from_ranges(self.onnx_path, self.ranges, kept)
        output = run_openvino(model, self.inputs, threads=self.threads)
        return accuracy_check(self.reference, output, "openvino-cpu").metrics()


class OpenVinoFp16Evaluator(PrecisionEvaluator):
    """The FP32 model compiled by OpenVINO at its reduced inference precision, ``kept`` nodes left in FP32.

    Args:
        inference_precision: ``fp16`` or ``bf16``; the one this CPU has (preferring f16) when None.
    """

    precision = "fp16"

    def __init__(
        self,
        onnx_path: Path,
        inputs: np.ndarray,
        reference: np.ndarray,
        threads: int | None = None,
        inference_precision: str | None = None,
    ) -> None:
        from optimize.backends.openvino import reduced_inference_precision

        self.onnx_path, self.inputs, self.reference, self.threads = onnx_path, inputs, reference, threads
        self.inference_precision = inference_precision or reduced_inference_precision()
        self.candidates = float_output_nodes(load_onnx(onnx_path))
        self.always_fp32 = []

    def measure(self, kept: Sequence[str]) -> dict[str, float]:
        from optimize.backends.openvino import run_openvino

        output = run_openvino(
            self.onnx_path,
            self.inputs,
            threads=self.threads,
            inference_precision=self.inference_precision,
            keep_fp32=kept,
        )
        return accuracy_check(self.reference, output, f"openvino-cpu-{self.inference_precision}").metrics()


class _OutOfSteps(Exception):
    """The step limit was reached; the search returns the smallest passing set it has measured."""


class _Search:
    """Measurements with memoization, step records and the step limit."""

    def __init__(
        self,
        evaluator: PrecisionEvaluator,
        budget: Budget,
        max_steps: int,
        on_step: Callable[[RecipeStep], None] | None,
    ) -> None:
        self.evaluator, self.budget, self.max_steps, self.on_step = evaluator, budget, max_steps, on_step
        self.memo: dict[frozenset[str], dict[str, float]] = {}
        self.steps: list[RecipeStep] = []

    def passes(self, kept: Sequence[str], action: str, description: str) -> bool:
        key = frozenset(kept)
        if key not in self.memo:
            if len(self.steps) >= self.max_steps:
                raise _OutOfSteps
            metrics = self.evaluator.measure(list(kept))
            self.memo[key] = metrics
            step = RecipeStep(
                step=len(self.steps) + 1,
                action=action,
                description=description,
                kept_count=len(kept),
                kept=list(kept) if len(kept) <= STEP_NAME_LIMIT else None,
                metrics=metrics,
                passed=self.budget.passes(metrics),
            )
            self.steps.append(step)
            if self.on_step:
                self.on_step(step)
        return self.budget.passes(self.memo[key])


def minimal_fp32_set(
    evaluator: PrecisionEvaluator,
    budget: Budget,
    max_steps: int = DEFAULT_MAX_STEPS,
    on_step: Callable[[RecipeStep], None] | None = None,
) -> tuple[list[str], bool, list[RecipeStep], dict[frozenset[str], dict[str, float]]]:
    """Bisect for the smallest set of candidate nodes to keep in FP32 (see the module docstring).

    Returns:
        ``(kept, minimal, steps, measurements)``: the nodes to keep (graph order), whether every one of them
        was shown necessary (False when ``max_steps`` ran out first: ``kept`` then is the smallest passing set
        measured), the steps, and every measurement by kept set.

    Raises:
        MoptError: even with every candidate in FP32 the model misses the budget.
    """
    if max_steps < 2:
        raise MoptError(f"max steps must be at least 2 (a baseline and a bound), got {max_steps}")
    search = _Search(evaluator, budget, max_steps, on_step)
    candidates = list(evaluator.candidates)
    order = {name: i for i, name in enumerate(candidates)}
    if search.passes([], "baseline", f"nothing kept in FP32 ({len(candidates)} candidate nodes reduced)"):
        return [], True, search.steps, search.memo
    if not candidates or not search.passes(candidates, "bound", f"all {len(candidates)} candidate nodes kept in FP32"):
        metrics = search.memo[frozenset(candidates)]
        raise MoptError(
            f"even with every candidate node in FP32 the {evaluator.precision} model misses the budget "
            f"({'; '.join(budget.violations(metrics))}); relax --budget"
        )
    kept: list[str] = []
    best = list(candidates)
    hi = len(candidates)  # kept + the first `hi` remaining candidates passes (here: every candidate)
    try:
        while True:
            rest = [c for c in candidates if c not in set(kept)]
            lo = 0  # invariant: kept + rest[:lo] fails, kept + rest[:hi] passes
            while hi - lo > 1:
                mid = (lo + hi) // 2
                trial = kept + rest[:mid]
                description = (
                    f"{len(kept)} found + first {mid}/{len(rest)} remaining candidates (through {rest[mid - 1]})"
                )
                if search.passes(trial, "bisect", description):
                    hi = mid
                    best = min(best, trial, key=len)
                else:
                    lo = mid
            newest = rest[hi - 1]
            kept.append(newest)
            kept.sort(key=order.__getitem__)
            # kept + the first hi - 1 of the new remainder is the set that just passed: the next search
            # only needs to look below it.
            hi -= 1
            if search.passes(kept, "check", f"the {len(kept)} node(s) found so far, newest {newest}"):
                best = list(kept)
                break
        for name in list(kept):
            trial = [k for k in kept if k != name]
            if search.passes(trial, "prune", f"the found set without {name}"):
                kept = trial
        return kept, True, search.steps, search.memo
    except _OutOfSteps:
        return sorted(best, key=order.__getitem__), False, search.steps, search.memo


def precision_recipe_from_onnx(
    onnx_path: str | Path,
    precision: str,
    budget: Budget | str = DEFAULT_BUDGET,
    images: str | Path | None = None,
    size: tuple[int, int] | None = None,
    count: int = DEFAULT_VERIFY_COUNT,
    calib_dir: str | Path | None = None,
    synthetic: int | None = None,
    method: str = "entropy",
    calib_cache: str | Path | None = None,
    calib_size: tuple[int, int] | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    threads: int | None = None,
    on_step: Callable[[RecipeStep], None] | None = None,
    runtime: str = "onnxruntime",
) -> PrecisionRecipe:
    """Measure which nodes of an FP32 ONNX must stay FP32 for its FP16 or INT8 version to meet ``budget``.

    Args:
        onnx_path: the FP32 model.
        precision: ``"fp16"`` or ``"int8"``.
        budget: e.g. ``"mad=0.004"`` or ``"mad=1e-3,max_abs=4e-3"``, against the FP32 model's mattes.
        images: folder of images to measure on; synthetic composites when None.
        size: measurement ``(height, width)``; the model's fixed size or 256 x 256 when None.
        count: images to measure on.
        calib_dir: INT8 calibration folder; ``images`` when None, else ``synthetic`` composites.
        synthetic: INT8 calibration on this many synthetic composites (default 16 when no folder is given).
        method: INT8 calibration method.
        calib_cache: INT8 calibration cache (shared with ``mopt quantize``).
        calib_size: INT8 calibration ``(height, width)``; the measurement size when None.
        max_steps: measurement limit; the recipe is marked not minimal if the search needs more.
        threads: CPU threads of the runtime.
        on_step: called after each measurement (the CLI prints it).
        runtime: what measures the reduced models: ``onnxruntime`` (the converters' own checks) or ``openvino``
            (its CPU plugin; FP16 means its f16/bf16 inference precision, whichever this CPU has).

    Raises:
        MoptError: bad model, precision, budget, runtime or inputs, a runtime that cannot run here, or a budget
            not even FP32 meets.
    """
    onnx_path = Path(onnx_path)
    if precision not in ("fp16", "int8"):
        raise MoptError(f"precision {precision!r} is not one a recipe can be made for; choose fp16 or int8")
    if runtime not in RUNTIMES:
        raise MoptError(f"unknown runtime {runtime!r} for a precision recipe; choose from {', '.join(RUNTIMES)}")
    inference_precision = None
    if runtime == "openvino":
        from optimize.backends.openvino import openvino_unavailable_reason, reduced_inference_precision

        reason = openvino_unavailable_reason()
        if reason:
            raise MoptError(f"--runtime openvino needs OpenVINO: {reason}")
        # Checked before any measurement: a CPU without f16/bf16 is refused at once.
        inference_precision = reduced_inference_precision() if precision == "fp16" else None
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    require_fp32_source(load_onnx(onnx_path), onnx_path)
    inputs, description = verification_inputs(onnx_path, images, size, count)
    reference = run_onnx(onnx_path, inputs, threads=threads, label="FP32 model")
    evaluator: PrecisionEvaluator
    if precision == "fp16" and runtime == "openvino":
        evaluator = OpenVinoFp16Evaluator(onnx_path, inputs, reference, threads, inference_precision)
        description = {**description, "inference_precision": inference_precision}
    elif precision == "fp16":
        evaluator = Fp16Evaluator(onnx_path, inputs, reference, threads)
    else:
        from optimize.quantize import (
            calibration_ranges_cached,
            calibration_set_from_folder,
            calibration_set_from_synthetic,
        )

        if calib_dir is not None and synthetic is not None:
            raise MoptError("give either --calib DIR or --synthetic N for INT8 calibration, not both")
        folder = calib_dir if calib_dir is not None else (images if synthetic is None else None)
        if folder is not None:
            calibration = calibration_set_from_folder(folder, onnx_path, calib_size or size)
        else:
            calibration = calibration_set_from_synthetic(
                synthetic or DEFAULT_INT8_SYNTHETIC, onnx_path, calib_size or size
            )
        cache = Path(calib_cache) if calib_cache else derived_path(onnx_path, "int8.calib", ".json")
        ranges, _ = calibration_ranges_cached(onnx_path, calibration, method, cache)
        evaluator_class = OpenVinoInt8Evaluator if runtime == "openvino" else Int8Evaluator
        evaluator = evaluator_class(onnx_path, inputs, reference, ranges, threads)
        description = {**description, "calibration": {"method": method, **calibration.description}}
    if any(not name for name in evaluator.candidates) or len(set(evaluator.candidates)) != len(evaluator.candidates):
        # A recipe names nodes; unnamed or duplicate names could not be written down or applied.
        raise MoptError(f"{onnx_path} has unnamed or duplicate node names; re-export it with `mopt export`")
    kept, minimal, steps, measured = minimal_fp32_set(evaluator, budget, max_steps, on_step)
    return PrecisionRecipe(
        precision=precision,
        runtime=runtime,
        budget=budget,
        nodes_to_keep_fp32=kept,
        measured=measured[frozenset(kept)],
        baseline=measured[frozenset()],
        steps=steps,
        source_onnx=onnx_path.name,
        source_onnx_sha256=file_sha256(onnx_path),
        inputs={**description, "always_fp32": evaluator.always_fp32, "candidates": len(evaluator.candidates)},
        minimal=minimal,
    )
