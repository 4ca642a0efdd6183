"""The @triton.jit kernels of the AOT plugins (imports triton; import this module lazily). See plugin_kernels.py.

An expert id outside [0, E) (TensorRT times plugin tactics on made-up inputs) reads no memory: a branch around
the row's loads (uniform per program, so the inner loop is the unchecked one) skips its weight, activation and
gate, and the (token, slot) row contributes zero (map: a zero row).
"""

import triton
import triton.language as tl


@triton.jit
def _expert_map_rows_kernel(
    x_ptr,
    expert_idx_ptr,
    w_ptr,
    R, K, N, D, E,
    y_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    r = tl.program_id(0)
    if r >= R:
        return
    t = (r // K).to(tl.int64)
    e = tl.load(expert_idx_ptr + r).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if (e >= 0) & (e < E):  # else: no load at all, a zero row
        w_rows = w_ptr + e * N * D + offs_n.to(tl.int64)[:, None] * D
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + t * D + offs_k, mask=offs_k < D, other=0.0).to(tl.float32)
            w = tl.load(w_rows + offs_k[None, :], mask=(offs_n[:, None] < N) & (offs_k[None, :] < D), other=0.0)
            acc += tl.sum(w.to(tl.float32) * x[None, :], axis=1)
    tl.store(y_ptr + r.to(tl.int64) * N + offs_n, acc.to(y_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _expert_reduce_rows_kernel(
    h_ptr,
    expert_idx_ptr,
    gates_ptr,
    w_ptr,
    bias_ptr,
    T, K, N, D, E,
    y_ptr,
    BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    t = tl.program_id(0)
    if t >= T:
        return
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    total = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in range(K):
        r = (t * K + j).to(tl.int64)
        e = tl.load(expert_idx_ptr + r).to(tl.int64)
        if (e >= 0) & (e < E):  # else: the slot is skipped, no load at all
            gate = tl.load(gates_ptr + r).to(tl.float32)
            w_rows = w_ptr + e * D * N + offs_d.to(tl.int64)[:, None] * N
            acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
            for k0 in range(0, N, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                h = tl.load(h_ptr + r * N + offs_k, mask=offs_k < N, other=0.0).to(tl.float32)
                w = tl.load(w_rows + offs_k[None, :], mask=(offs_d[:, None] < D) & (offs_k[None, :] < N), other=0.0)
                acc += tl.sum(w.to(tl.float32) * h[None, :], axis=1)
            total += gate * acc
    bias = tl.load(bias_ptr + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    tl.store(y_ptr + t.to(tl.int64) * D + offs_d, (total + bias).to(y_ptr.dtype.element_ty), mask=offs_d < D)
