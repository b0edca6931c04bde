"""Polygraphy runners over mopt's inference backends.

Polygraphy's own ``PytRunner`` cannot serve ``Comparator`` (it returns a tuple and never sets
``inference_time``), so :class:`BackendRunner` adapts any :class:`~optimize.backends.InferenceBackend`
— PyTorch, ONNX Runtime, TensorRT, OpenVINO — to Polygraphy's ``BaseRunner`` contract: activate, infer a
name -> array dict, report the inference time, deactivate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from optimize.backends import InferenceBackend
from optimize.export import INPUT_NAME, OUTPUT_NAME


class BackendRunner(BaseRunner):
    """A Polygraphy runner that builds its backend on activation and releases it on deactivation.

    Args:
        make_backend: called on ``activate()``; building lazily keeps only one large model in memory at a
            time while ``Comparator.run`` goes through the runners one after the other.
        name: the runner's name in Polygraphy's results (unique per comparison).
    """

    def __init__(self, make_backend: Callable[[], InferenceBackend], name: str) -> None:
        super().__init__(name=name, prefix="mopt-runner")
        self._make_backend = make_backend
        self.backend: InferenceBackend | None = None

    def activate_impl(self) -> None:
        self.backend = self._make_backend()

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(INPUT_NAME, np.float32, ("batch", 3, "height", "width"))

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        alpha = self.backend.infer(feed_dict[INPUT_NAME])
        self.inference_time = time.perf_counter() - start
        return {OUTPUT_NAME: alpha}

    def deactivate_impl(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.backend = None
