"""The runner contract. Subclasses write only the `*_impl` parts.

    with OnnxrtRunner("model.onnx") as runner:
        outputs = runner.infer({"input_ids": ..., "attention_mask": ..., ...})   # name -> numpy array

Every runner speaks the exported graph's names (export/io_names.py): the same feeds go to every backend and
the same output names come back, so the comparator never needs to know which backend produced what.
"""

from __future__ import annotations

import abc
import time

import numpy as np

from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from jetmoe.errors import JetMoeError


class RunnerUnavailable(JetMoeError):
    """The backend cannot run here (library or hardware missing); the message says why."""


class BaseRunner(abc.ABC):
    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_time: float | None = None

    # ---- what subclasses provide --------------------------------------------------------------------------

    def activate_impl(self) -> None:
        """Load the model / create the session. Raise RunnerUnavailable if this backend cannot run here."""

    def deactivate_impl(self) -> None:
        """Release what activate_impl took."""

    @abc.abstractmethod
    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference on the active backend."""

    @property
    @abc.abstractmethod
    def config(self) -> JetMoeConfig:
        """The model config the backend runs (valid once active)."""

    @property
    @abc.abstractmethod
    def io_names(self) -> IoNames:
        """The input and output names the backend speaks (valid once active)."""

    # ---- the contract -------------------------------------------------------------------------------------

    def __enter__(self) -> BaseRunner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.is_active, f"{self.name}: infer() outside `with runner:`"
        start = time.perf_counter()
        outputs = self.infer_impl(feeds)
        self.last_inference_time = time.perf_counter() - start
        return outputs
