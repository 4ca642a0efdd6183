"""Triton kernels for the expert-dispatch ops (docs/ops.md): alignment by expert and two grouped GEMMs.

    align_by_expert(expert_idx, E, BLOCK_M)      -> sorted_rows, block_expert, num_rows_padded (static sizes)
    expert_map(x, expert_idx, weight)            -> y [T, K, N]
    expert_reduce(h, expert_idx, gates, weight, bias) -> y [T, D]

Layer 3 of three (STYLE.md, Kernels): `register_cuda_kernels()` makes the launchers the CUDA implementations
of the `jetmoe::expert_map` / `jetmoe::expert_reduce` torch ops when triton and a CUDA device are present. It is
an explicit call (the CLI and the plugins' JIT path make it), never an import side effect. Without it the eager
ops of `jetmoe.ops` serve every device. Triton is imported lazily, so this package imports without it.

`engines.kernels.aot` compiles the kernels ahead of time for sm_90 (PTX for TensorRT plugins), no GPU needed.
"""

from __future__ import annotations

import importlib.util

from engines.kernels.dispatch import align_by_expert, align_by_expert_reference, expert_map, expert_reduce
from engines.kernels.launch_config import get_config
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE

__all__ = [
    "align_by_expert", "align_by_expert_reference", "expert_map", "expert_reduce", "get_config",
    "register_cuda_kernels", "triton_available",
]

_registered = False


def triton_available() -> bool:
    """Whether triton is installed (without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except ValueError:  # sys.modules["triton"] is None: imports of it are blocked
        return False


def _expert_map_cuda(x, expert_idx, weight):
    return expert_map(x.contiguous(), expert_idx.contiguous(), weight.contiguous())


def _expert_reduce_cuda(h, expert_idx, gates, weight, bias):
    return expert_reduce(h.contiguous(), expert_idx.contiguous(), gates.contiguous(), weight.contiguous(),
                         bias.contiguous())


def register_cuda_kernels(force: bool = False) -> bool:
    """Make the Triton launchers the "cuda" kernels of `jetmoe::expert_map` and `jetmoe::expert_reduce`.

    Does nothing (returns False) without triton or, unless `force`, without a CUDA device. Idempotent.
    """
    global _registered
    import torch

    if _registered:
        return True
    if not triton_available() or not (force or torch.cuda.is_available()):
        return False
    import jetmoe.ops  # noqa: F401  (defines the ops)

    torch.library.register_kernel(EXPERT_MAP.qualified_name, "cuda")(_expert_map_cuda)
    torch.library.register_kernel(EXPERT_REDUCE.qualified_name, "cuda")(_expert_reduce_cuda)
    _registered = True
    return True
