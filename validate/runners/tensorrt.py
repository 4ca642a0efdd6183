"""TensorRT: runs a built engine through the engine runtime in engines/ (where TensorRT and a GPU exist)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from validate.runners.base import BaseRunner, RunnerUnavailable


class TrtRunner(BaseRunner):
    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.engine = None

    def activate_impl(self) -> None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise RunnerUnavailable("TensorRT is not installed (its builder libraries come from NVIDIA's package "
                                    "index, not PyPI: pip install 'jetmoe-trt[trt]' on a machine that reaches it)"
                                    ) from None
        from engines.errors import TensorRTUnavailable
        from engines.runtime import JetMoeEngine

        try:
            self.engine = JetMoeEngine(self.engine_path)
        except TensorRTUnavailable as e:  # e.g. TensorRT present but no CUDA GPU
            raise RunnerUnavailable(str(e)) from None

    def deactivate_impl(self) -> None:
        self.engine = None

    @property
    def config(self) -> JetMoeConfig:
        return self.engine.config

    @property
    def io_names(self) -> IoNames:
        return self.engine.io_names

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.infer(feeds)
