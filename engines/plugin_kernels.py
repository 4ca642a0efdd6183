"""Single-launch Triton kernels for the AOT plugins: one kernel per op, rows gathered by expert on load.

Why these exist beside `engines/kernels/` (the grouped-GEMM kernels): a Quickly Deployable Plugin's
`aot_impl` returns ONE kernel (name, PTX, launch params, int32 extra args) and gets no workspace. The grouped
GEMMs need an alignment kernel first (sorted_rows, block_expert: scratch buffers) and expert_reduce also a sum
kernel, so they cannot be an AOT plugin as they stand. These kernels need neither: a program computes one
(token, slot) row against its expert's weight tile (GEMV-like, fp32 accumulation), reading the expert id from
`expert_idx` itself. They are right for decode (few rows, memory-bound: each expert weight tile is read once
per row that uses it, which at T*K rows <= E is what the grouped GEMM reads too) and slow for long prefill
(the weight is re-read per row instead of per BLOCK_M rows). The JIT implementation (`@trtp.impl`) uses the
grouped GEMMs instead.

Argument order is QDP's AOT launch order: input pointers, int32 extra args, output pointers. Inputs must be
contiguous (TensorRT's LINEAR format). Key parameters (letters as docs/ops.md; R = T*K rows, r = t*K + j):
    map:    x [T, D], expert_idx [T, K] int32/int64, w [E, N, D] -> y [T, K, N];   grid (R, cdiv(N, BLOCK_N))
    reduce: h [T, K, N], expert_idx [T, K], gates [T, K], w [E, D, N], bias [D] -> y [T, D];
            grid (T, cdiv(D, BLOCK_D)); slots summed in slot order, then the bias, in fp32; one cast at the end
Programs past the last row (the grid is at least 1 so that T = 0 still launches) return at once.

Triton (>= 3.3) appends two hidden pointer parameters (global and profile scratch) to every entry; TensorRT
launches an AOT kernel with exactly its inputs, extra args and outputs. `compile_ptx` removes those trailing
parameters from the PTX entry after checking the body never reads them (these kernels use no scratch), so the
entry's signature is exactly TensorRT's argument list; `ptxas` assembles the result (tested).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple


class Tiles(NamedTuple):
    block_n: int  # BLOCK_N for map (tiles N), BLOCK_D for reduce (tiles D)
    block_k: int  # the reduction tile (D for map, N for reduce)
    num_warps: int


# tactic -> tiles; tactic 0 is TensorRT's default, the others are timed by the builder
TACTICS = {1: Tiles(64, 64, 4), 2: Tiles(128, 64, 4), 3: Tiles(32, 128, 2)}
DEFAULT_TACTIC = 1


def kernels():
    """op name -> @triton.jit kernel (imports triton on first use)."""
    from engines import _plugin_jit

    return {"expert_map": _plugin_jit._expert_map_rows_kernel, "expert_reduce": _plugin_jit._expert_reduce_rows_kernel}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def expert_map_rows(x, expert_idx, weight, tactic: int = DEFAULT_TACTIC):
    """Launch the map kernel from torch (tests; TRITON_INTERPRET=1 runs it on CPU). Contiguous inputs."""
    import torch

    T, K = expert_idx.shape
    _, N, D = weight.shape
    tiles = TACTICS[tactic]
    y = torch.empty(T, K, N, dtype=x.dtype, device=x.device)
    grid = (max(T * K, 1), _cdiv(N, tiles.block_n))
    kernels()["expert_map"][grid](x, expert_idx, weight, T * K, K, N, D, y,
                                  BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps)
    return y


def expert_reduce_rows(h, expert_idx, gates, weight, bias, tactic: int = DEFAULT_TACTIC):
    """Launch the reduce kernel from torch (tests; TRITON_INTERPRET=1 runs it on CPU). Contiguous inputs."""
    import torch

    T, K, N = h.shape
    _, D, _ = weight.shape
    tiles = TACTICS[tactic]
    y = torch.empty(T, D, dtype=h.dtype, device=h.device)
    grid = (max(T, 1), _cdiv(D, tiles.block_n))
    kernels()["expert_reduce"][grid](h, expert_idx, gates, weight, bias, T, K, N, D, y,
                                     BLOCK_D=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps)
    return y


DECLARED_ARGS = {"expert_map": 8, "expert_reduce": 10}  # pointers + int32 args, as TensorRT passes them


@functools.cache
def compile_ptx(op: str, dtype: str, index_dtype: str, tactic: int, arch: int):
    """PTX for one op at one dtype/tactic (no GPU needed; not under TRITON_INTERPRET): an AotKernel whose
    entry takes exactly the arguments TensorRT passes (triton's unused scratch parameters removed)."""
    from engines.kernels.aot import compile_kernel

    tiles = TACTICS[tactic]
    tile_name = "BLOCK_N" if op == "expert_map" else "BLOCK_D"
    kernel = compile_kernel(kernels()[op], {tile_name: tiles.block_n, "BLOCK_K": tiles.block_k}, dtype=dtype,
                            index_dtype=index_dtype, num_warps=tiles.num_warps, num_stages=1, arch=arch,
                            unit_strides=False)
    return kernel._replace(ptx=strip_unused_params(kernel.ptx, kernel.name, DECLARED_ARGS[op]))


def strip_unused_params(ptx: str, name: str, keep: int) -> str:
    """Drop the entry's parameters after the first `keep` (triton's hidden global/profile scratch pointers).

    TensorRT launches an AOT kernel with exactly inputs + extra args + outputs; an entry declaring more
    parameters would read past its argument array. Refuses (ValueError) if the kernel body uses a dropped one.
    """
    match = re.search(r"(\.entry\s+" + re.escape(name) + r"\s*\()(.*?)(\))", ptx, re.DOTALL)
    if match is None:
        raise ValueError(f"no .entry {name} in the PTX")
    params = [p.strip() for p in match.group(2).split(",")]
    for param in params[keep:]:
        param_name = param.split()[-1]
        if re.search(r"\[" + re.escape(param_name) + r"\]", ptx):
            raise ValueError(f"{name} uses its parameter {param_name} (triton scratch memory): TensorRT does not "
                             f"pass it to AOT kernels")
    body = ",\n\t".join(params[:keep])
    return ptx[:match.start(2)] + "\n\t" + body + "\n" + ptx[match.end(2):]
