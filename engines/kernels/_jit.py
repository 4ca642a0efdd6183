"""The Triton kernels behind `engines.kernels` (private: imported lazily, only where triton is installed).

Layer 1 of three (STYLE.md, Kernels): the `@triton.jit` kernels. The launchers that check inputs and compute
grids are in `engines/kernels/dispatch.py`; the torch-op registration is in `engines/kernels/__init__.py`.

Whether these are compiled or interpreted is decided by triton when this module is imported: set
`TRITON_INTERPRET=1` before the first import to run them on CPU tensors.

Letters: T tokens, K slots per token, R = T*K (token, slot) rows, E experts, D model width, N expert width,
P the static aligned length R + E*(BLOCK_M - 1) (padding rows hold the sentinel R).
"""

import triton
import triton.language as tl


@triton.jit
def _align_kernel(
    expert_idx_ptr,  # [R] int32/int64: expert_idx[T, K] flattened (row r = t*K + j)
    sorted_rows_ptr,  # [P] int32 out: rows grouped by expert, each group padded to a multiple of BLOCK_M
    block_expert_ptr,  # [P // BLOCK_M] int32 out: expert of each BLOCK_M block, -1 past the used blocks
    num_rows_padded_ptr,  # [1] int32 out: sum over experts of the padded group sizes
    num_rows,  # R
    num_padded_slots,  # P
    num_blocks,  # cdiv(P, BLOCK_M)
    num_experts,  # E: an id outside [0, E) joins no group, so its row is never read or written
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    E_POW2: tl.constexpr,  # next power of two >= E
):
    """One program. Pass 1 counts rows per expert; pass 2 writes each row to its expert's group (stable:
    token order within an expert); pass 3 writes the sentinel into the padding slots and the block experts.
    Every slot of the outputs is written exactly once, so no barrier is needed between the passes."""
    offs = tl.arange(0, BLOCK_R)
    experts = tl.arange(0, E_POW2)
    counts = tl.zeros([E_POW2], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_R):
        rows = start + offs
        ids = tl.load(expert_idx_ptr + rows, mask=rows < num_rows, other=-1).to(tl.int32)
        ids = tl.where(ids < num_experts, ids, -1)
        counts += tl.sum((ids[:, None] == experts[None, :]).to(tl.int32), axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total = tl.sum(padded, axis=0)

    seen = tl.zeros([E_POW2], dtype=tl.int32)
    for start in range(0, num_rows, BLOCK_R):
        rows = start + offs
        valid = rows < num_rows
        ids = tl.load(expert_idx_ptr + rows, mask=valid, other=-1).to(tl.int32)
        ids = tl.where(ids < num_experts, ids, -1)
        onehot = (ids[:, None] == experts[None, :]).to(tl.int32)  # [BLOCK_R, E_POW2]
        rank = tl.cumsum(onehot, axis=0) - 1 + seen[None, :]
        dest = tl.sum(onehot * (starts[None, :] + rank), axis=1)
        tl.store(sorted_rows_ptr + dest, rows.to(tl.int32), mask=valid & (tl.sum(onehot, axis=1) > 0))
        seen += tl.sum(onehot, axis=0)

    for start in range(0, num_padded_slots, BLOCK_R):
        slots = start + offs
        inside = (slots[:, None] >= starts[None, :]) & (slots[:, None] < starts[None, :] + counts[None, :])
        is_row = tl.sum(inside.to(tl.int32), axis=1) > 0
        tl.store(sorted_rows_ptr + slots, tl.full([BLOCK_R], 0, tl.int32) + num_rows,
                 mask=(slots < num_padded_slots) & ~is_row)
    for start in range(0, num_blocks, BLOCK_R):
        blocks = start + offs
        first = blocks * BLOCK_M
        expert = tl.sum((first[:, None] >= ends[None, :]).to(tl.int32), axis=1)
        expert = tl.where(first < total, expert, -1)
        tl.store(block_expert_ptr + blocks, expert, mask=blocks < num_blocks)
    tl.store(num_rows_padded_ptr, total)


@triton.jit
def _expert_map_kernel(
    x_ptr, stride_xt, stride_xd,  # [T, D]
    weight_ptr, stride_we, stride_wn, stride_wd,  # [E, N, D]
    y_ptr, stride_yr, stride_yn,  # [R, N]: y[T, K, N] viewed as rows r = t*K + j
    sorted_rows_ptr,  # [P] int32
    block_expert_ptr,  # [cdiv(P, BLOCK_M)] int32
    num_rows,  # R
    top_k,  # K
    N,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no tf32), ignored for 16-bit inputs
    DOT_IN_FP32: tl.constexpr,  # upcast the operands before the dot (only under the interpreter)
):
    """Program (m, n): one BLOCK_M block of aligned rows of one expert e, columns n*BLOCK_N.
    Gathers x[row // K] on load, y[row] = x[row // K] @ W[e]^T in fp32, stores in y's type."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:  # past the used blocks: nothing to do
        return
    rows = tl.load(sorted_rows_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows < num_rows
    tokens = tl.where(row_ok, rows // top_k, 0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + tokens[:, None].to(tl.int64) * stride_xt + ks[None, :] * stride_xd
    w_ptrs = weight_ptr + expert.to(tl.int64) * stride_we + cols[None, :] * stride_wn + ks[:, None] * stride_wd
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        k_ok = k0 + ks < D
        a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if DOT_IN_FP32:  # triton's interpreter: its bf16 dot is wrong (numpy has no bf16); exact in fp32
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xd
        w_ptrs += BLOCK_K * stride_wd
    y_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_yr + cols[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _expert_reduce_gemm_kernel(
    h_ptr, stride_hr, stride_hn,  # [R, N]: h[T, K, N] viewed as rows r = t*K + j
    gates_ptr, stride_gr,  # [R]: gates[T, K] flattened
    weight_ptr, stride_we, stride_wd, stride_wn,  # [E, D, N]
    out_ptr, stride_or, stride_od,  # [R, D] fp32: gated rows, summed over K by _expert_reduce_sum_kernel
    sorted_rows_ptr,  # [P] int32
    block_expert_ptr,  # [cdiv(P, BLOCK_M)] int32
    num_rows,  # R
    D,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # tile over D (the output width)
    BLOCK_K: tl.constexpr,  # tile over N (the reduction)
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """Program (m, n): out[row, cols] = gates[row] * (h[row] @ W[e]^T)[cols] in fp32, rows gathered on load."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    rows = tl.load(sorted_rows_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows < num_rows
    safe_rows = tl.where(row_ok, rows, 0).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < D
    ks = tl.arange(0, BLOCK_K)
    h_ptrs = h_ptr + safe_rows[:, None] * stride_hr + ks[None, :] * stride_hn
    w_ptrs = weight_ptr + expert.to(tl.int64) * stride_we + cols[None, :] * stride_wd + ks[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, N, BLOCK_K):
        k_ok = k0 + ks < N
        a = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if DOT_IN_FP32:  # triton's interpreter: its bf16 dot is wrong (numpy has no bf16); exact in fp32
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        h_ptrs += BLOCK_K * stride_hn
        w_ptrs += BLOCK_K * stride_wn
    gate = tl.load(gates_ptr + safe_rows * stride_gr, mask=row_ok, other=0.0).to(tl.float32)
    acc = acc * gate[:, None]
    out_ptrs = out_ptr + safe_rows[:, None] * stride_or + cols[None, :] * stride_od
    tl.store(out_ptrs, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _expert_reduce_sum_kernel(
    gated_ptr, stride_gr, stride_gd,  # [R, D] fp32 from _expert_reduce_gemm_kernel
    bias_ptr, stride_b,  # [D]
    y_ptr, stride_yt, stride_yd,  # [T, D] out, in bias's type
    top_k,  # K
    D,
    BLOCK_D: tl.constexpr,
):
    """Program (t, d): y[t, cols] = sum_j gated[t*K + j, cols] + bias[cols], summed in fp32 in slot order."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.load(bias_ptr + cols * stride_b, mask=col_ok, other=0.0).to(tl.float32)
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j in range(top_k):
        total += tl.load(gated_ptr + (token * top_k + j) * stride_gr + cols * stride_gd, mask=col_ok, other=0.0)
    acc = total + acc
    tl.store(y_ptr + token * stride_yt + cols * stride_yd, acc.to(y_ptr.dtype.element_ty), mask=col_ok)
