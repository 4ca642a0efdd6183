"""The Triton kernel tests: interpreted on CPU tensors where there is no GPU, compiled on CUDA where there is.

TRITON_INTERPRET must be set before the kernels module (`engines/kernels/_jit.py`) is first imported: triton
decides at decoration time whether a kernel is interpreted. So it is set here, at collection, and only when
no CUDA device is present (with one, the same tests run the compiled kernels on the GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"


def need_triton():
    return pytest.importorskip("triton", reason="the kernel tests need triton: pip install triton "
                                                "(CPU: it runs under TRITON_INTERPRET=1)")


@pytest.fixture
def device() -> str:
    need_triton()
    return DEVICE
