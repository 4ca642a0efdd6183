"""ONNX Runtime (CPU, or CUDA where available) on an exported model.onnx."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from jetmoe.errors import ExportError
from validate.runners.base import BaseRunner, RunnerUnavailable

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
_FLOATS = {"fp32": np.float32, "fp16": np.float16}


class OnnxrtRunner(BaseRunner):
    def __init__(self, model_path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.provider = provider
        self.threads = threads
        self.name = f"onnxruntime-{provider}"
        self.model = None

    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunnerUnavailable("onnxruntime is not installed: pip install 'jetmoe-trt[ort]'") from None
        if self.provider not in PROVIDERS:
            raise RunnerUnavailable(f"unknown provider {self.provider!r}; choose one of {sorted(PROVIDERS)}")
        if PROVIDERS[self.provider][0] not in ort.get_available_providers():
            raise RunnerUnavailable(f"{PROVIDERS[self.provider][0]} is not available in this onnxruntime "
                                    f"(has {ort.get_available_providers()})")
        from export.onnx_runtime import OnnxModel

        try:
            self.model = OnnxModel(self.model_path, providers=PROVIDERS[self.provider], threads=self.threads)
        except ExportError:
            raise
        except Exception as e:  # session creation: ORT raises its own types; the message is what matters
            raise RunnerUnavailable(f"ONNX Runtime cannot load {self.model_path}: {str(e).splitlines()[0]}") from None

    def deactivate_impl(self) -> None:
        self.model = None

    @property
    def config(self) -> JetMoeConfig:
        return self.model.config

    @property
    def io_names(self) -> IoNames:
        return self.model.names

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        floating = _FLOATS.get(self.model.dtype, np.float32)
        typed = {name: (value.astype(floating) if value.dtype.kind == "f" else value.astype(np.int64))
                 for name, value in feeds.items() if name in self.io_names.inputs}
        outputs = self.model.run(typed)
        return {name: value.astype(np.float32) if value.dtype == np.float16 else value
                for name, value in outputs.items()}
