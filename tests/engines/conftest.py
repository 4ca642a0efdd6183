"""Fixtures of the engine tests: TensorRT-RTX (a test dependency: its tests run in CI, they never skip) and the
real `tensorrt.plugin` sources (fetched with pip)."""

from __future__ import annotations

import pytest
from qdp_wheel import qdp_sources


@pytest.fixture(scope="session")
def rtx():
    """The `tensorrt_rtx` module. Missing, it fails the test: CI must build real engines."""
    try:
        import tensorrt_rtx
    except ImportError as e:
        pytest.fail(f"tensorrt_rtx is a test dependency ({e}): pip install 'jetmoe-trt[test]' "
                    f"(tensorrt-rtx-cu12 from PyPI; no GPU needed)")
    return tensorrt_rtx


@pytest.fixture(scope="session")
def qdp_source_dir():
    """The unpacked `tensorrt_bindings` Python sources of the pinned tensorrt-cu13-bindings wheel."""
    return qdp_sources()
