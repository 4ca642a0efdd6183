"""Launchers for the expert-dispatch Triton kernels: check inputs, align rows by expert, compute grids.

Layer 2 of three (STYLE.md, Kernels). The kernels are in `engines/kernels/_jit.py`; `engines.kernels`
registers `expert_map` / `expert_reduce` below as the CUDA implementations of the `jetmoe::` torch ops.
The op contract is docs/ops.md. Letters: T tokens, K slots per token, R = T*K rows (row r = t*K + j),
E experts, D model width, N expert width, BLOCK_M the M tile.

Alignment (after vLLM's `moe_align_block_size`): the R (token, slot) rows are grouped by expert, stably
(token order within an expert), and each group is padded to a multiple of BLOCK_M, so every BLOCK_M block
of the aligned list belongs to one expert. Sizes are static: `sorted_rows` has P = R + E*(BLOCK_M-1) slots
(the most the padding can take), padding slots hold the sentinel R, and `block_expert` has cdiv(P, BLOCK_M)
entries, -1 for the blocks past the used ones (their programs exit at once). The GEMM kernels gather
input rows through `sorted_rows` on load (ScatterMoE's scatter2scatter): no padded copy of x or h is made.

Nothing here synchronises with the host: expert ids outside [0, E) are not checked; such a (token, slot) joins
no expert group, so it reads no weight and contributes zero (a zero row for map), as the AOT plugin kernels and
the references do (docs/ops.md). The eager op `jetmoe.ops` refuses them.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from engines.kernels.launch_config import get_config
from jetmoe.errors import InputError
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE
from jetmoe.ops import check

_INPUT_PRECISION = {torch.float32: "ieee", torch.float16: "tf32", torch.bfloat16: "tf32"}  # fp32: no tf32


def _kernels():
    from engines.kernels import _jit  # imports triton: only when a kernel is launched

    return _jit


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def aligned_length(num_rows: int, num_experts: int, block_m: int) -> int:
    """P, the static length of `sorted_rows`: R rows plus at most BLOCK_M - 1 padding slots per expert."""
    return num_rows + num_experts * (block_m - 1)


@functools.cache
def _device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def _interpreted() -> bool:
    return type(_kernels()._expert_map_kernel).__name__ == "InterpretedFunction"


def _dot_in_fp32(dtype: torch.dtype) -> bool:
    """Under triton's interpreter a bf16 `tl.dot` is wrong; bf16 products are exact in fp32, so upcast there."""
    return dtype == torch.bfloat16 and _interpreted()


def _check_placement(op: str, **tensors: Tensor) -> None:
    """All on one device, contiguous, and on CUDA unless the kernels run in triton's interpreter."""
    first_name, first = next(iter(tensors.items()))
    interpreted = _interpreted()
    for name, t in tensors.items():
        if t.device != first.device:
            raise InputError(f"{op}: {name} is on {t.device} but {first_name} is on {first.device}")
        if not t.is_contiguous():
            raise InputError(f"{op}: {name} must be contiguous, got strides {t.stride()} for shape {tuple(t.shape)}")
    if first.device.type != "cuda" and not interpreted:
        raise InputError(f"{op}: {first_name} is on {first.device}; the Triton kernels need CUDA tensors "
                         f"(or TRITON_INTERPRET=1 set before triton is imported, to interpret them on CPU)")


def align_by_expert(expert_idx: Tensor, num_experts: int, block_m: int, *, config: dict | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """Group the (token, slot) rows by expert, each group padded to a multiple of `block_m`.

    Key parameters:
        expert_idx [T, K] int32/int64, values in [0, E), contiguous
        num_experts E; block_m the M tile of the GEMM that will read the blocks (a power of two >= 16)
    Returns (static sizes, all int32, on expert_idx's device):
        sorted_rows [R + E*(block_m-1)]: row r = t*K + j, grouped by expert in token order, padding = R
        block_expert [cdiv(R + E*(block_m-1), block_m)]: the expert of each block, -1 past the used blocks
        num_rows_padded [1]: the number of used slots (a multiple of block_m)
    """
    if expert_idx.dim() != 2 or expert_idx.dtype not in (torch.int32, torch.int64):
        raise InputError(f"align_by_expert: expert_idx must be [T, K] int32/int64, got shape "
                         f"{tuple(expert_idx.shape)} and {expert_idx.dtype}")
    if num_experts < 1:
        raise InputError(f"align_by_expert: num_experts must be >= 1, got {num_experts}")
    if block_m < 16 or block_m & (block_m - 1):
        raise InputError(f"align_by_expert: block_m must be a power of two >= 16, got {block_m}")
    _check_placement("align_by_expert", expert_idx=expert_idx)
    R = expert_idx.numel()
    P = aligned_length(R, num_experts, block_m)
    num_blocks = _cdiv(P, block_m)
    device = expert_idx.device
    sorted_rows = torch.empty(P, dtype=torch.int32, device=device)
    block_expert = torch.empty(num_blocks, dtype=torch.int32, device=device)
    num_rows_padded = torch.empty(1, dtype=torch.int32, device=device)
    cfg = config or get_config("align", R, device_name=_device_name(device))
    _kernels()._align_kernel[(1,)](
        expert_idx, sorted_rows, block_expert, num_rows_padded, R, P, num_blocks, num_experts,
        BLOCK_M=block_m, BLOCK_R=cfg["BLOCK_R"], E_POW2=max(_next_pow2(num_experts), 2),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 1),
    )
    return sorted_rows, block_expert, num_rows_padded


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def align_by_expert_reference(expert_idx: Tensor, num_experts: int, block_m: int) -> tuple[Tensor, Tensor, Tensor]:
    """A deliberately dumb loop with `align_by_expert`'s contract, for the tests."""
    flat = [int(v) for v in expert_idx.reshape(-1).tolist()]
    R = len(flat)
    P = aligned_length(R, num_experts, block_m)
    slots: list[int] = []
    blocks: list[int] = []
    for e in range(num_experts):
        group = [r for r in range(R) if flat[r] == e]
        padded = _cdiv(len(group), block_m) * block_m
        slots += group + [R] * (padded - len(group))
        blocks += [e] * (padded // block_m)
    used = len(slots)
    slots += [R] * (P - used)
    blocks += [-1] * (_cdiv(P, block_m) - len(blocks))
    as_int = functools.partial(torch.tensor, dtype=torch.int32)
    return as_int(slots), as_int(blocks), as_int([used])


def _launch(cfg: dict) -> dict:
    return {"num_warps": cfg.get("num_warps", 4), "num_stages": cfg.get("num_stages", 3)}


def expert_map(x: Tensor, expert_idx: Tensor, weight: Tensor, *, config: dict | None = None) -> Tensor:
    """`jetmoe::expert_map` as a grouped GEMM: y[t, j] = weight[expert_idx[t, j]] @ x[t].

    Key parameters:
        x [T, D] float32/float16/bfloat16; expert_idx [T, K] int32/int64; weight [E, N, D] (x's type)
        config: tiles {BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages}; default from configs/*.json
    Returns y [T, K, N] in x's type (fp32 accumulation).
    Grid: (cdiv(P, BLOCK_M), cdiv(N, BLOCK_N)); a program's rows are one expert's, gathered from x on load.
    """
    check(EXPERT_MAP, x, expert_idx, weight)
    _check_placement("expert_map", x=x, expert_idx=expert_idx, weight=weight)
    T, K = expert_idx.shape
    E, N, D = weight.shape
    y = torch.zeros(T, K, N, dtype=x.dtype, device=x.device)  # a row of an id outside [0, E) stays zero
    if T == 0 or N == 0:
        return y
    cfg = config or get_config("expert_map", T, E, N, D, x.dtype, _device_name(x.device))
    sorted_rows, block_expert, _ = align_by_expert(expert_idx, E, cfg["BLOCK_M"])
    y_rows = y.view(T * K, N)
    grid = (block_expert.numel(), _cdiv(N, cfg["BLOCK_N"]))
    _kernels()._expert_map_kernel[grid](
        x, x.stride(0), x.stride(1),
        weight, weight.stride(0), weight.stride(1), weight.stride(2),
        y_rows, y_rows.stride(0), y_rows.stride(1),
        sorted_rows,
        block_expert,
        T * K, K, N, D,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        INPUT_PRECISION=_INPUT_PRECISION[x.dtype], DOT_IN_FP32=_dot_in_fp32(x.dtype),
        **_launch(cfg),
    )
    return y


def expert_reduce(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor, *,
                  config: dict | None = None, sum_config: dict | None = None) -> Tensor:
    """`jetmoe::expert_reduce`: y[t] = sum_j gates[t, j] * (weight[expert_idx[t, j]] @ h[t, j]) + bias.

    Key parameters:
        h [T, K, N] float32/float16/bfloat16; expert_idx [T, K] int32/int64; gates [T, K], weight [E, D, N],
        bias [D] (h's type)
        config: GEMM tiles (BLOCK_N tiles D, BLOCK_K tiles N); sum_config: {BLOCK_D, num_warps}
    Returns y [T, D] in h's type.
    Two deterministic steps: a grouped GEMM writes each gated row, fp32, to a [R, D] buffer (grid
    (cdiv(P, BLOCK_M), cdiv(D, BLOCK_N))); then a sum kernel adds each token's K rows in slot order and the
    bias in fp32 and casts (grid (T, cdiv(D, BLOCK_D))). No atomics.
    """
    check(EXPERT_REDUCE, h, expert_idx, gates, weight, bias)
    _check_placement("expert_reduce", h=h, expert_idx=expert_idx, gates=gates, weight=weight, bias=bias)
    T, K, N = h.shape
    E, D, _ = weight.shape
    y = torch.empty(T, D, dtype=h.dtype, device=h.device)
    if T == 0 or D == 0:
        return y
    jit = _kernels()
    device_name = _device_name(h.device)
    cfg = config or get_config("expert_reduce", T, E, D, N, h.dtype, device_name)
    sorted_rows, block_expert, _ = align_by_expert(expert_idx, E, cfg["BLOCK_M"])
    h_rows = h.view(T * K, N)
    gates_rows = gates.view(T * K)
    gated = torch.zeros(T * K, D, dtype=torch.float32, device=h.device)  # an id outside [0, E) adds zero
    grid = (block_expert.numel(), _cdiv(D, cfg["BLOCK_N"]))
    jit._expert_reduce_gemm_kernel[grid](
        h_rows, h_rows.stride(0), h_rows.stride(1),
        gates_rows, gates_rows.stride(0),
        weight, weight.stride(0), weight.stride(1), weight.stride(2),
        gated, gated.stride(0), gated.stride(1),
        sorted_rows,
        block_expert,
        T * K, D, N,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
        INPUT_PRECISION=_INPUT_PRECISION[h.dtype], DOT_IN_FP32=_dot_in_fp32(h.dtype),
        **_launch(cfg),
    )
    scfg = sum_config or get_config("expert_reduce_sum", T, E, D, N, h.dtype, device_name)
    jit._expert_reduce_sum_kernel[(T, _cdiv(D, scfg["BLOCK_D"]))](
        gated, gated.stride(0), gated.stride(1),
        bias, bias.stride(0),
        y, y.stride(0), y.stride(1),
        K, D,
        BLOCK_D=scfg["BLOCK_D"], **_launch(scfg),
    )
    return y
