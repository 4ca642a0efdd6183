"""The expert-dispatch ops: `jetmoe::expert_map` and `jetmoe::expert_reduce`.

One contract (docs/ops.md) shared by the torch custom ops here, the ONNX nodes and their local-function
bodies (export/), the Triton kernels and the TensorRT plugins (engines/). Both MoA and MoE use them:

    map     x[T, D], expert_idx[T, K], weight[E, N, D]                          -> y[T, K, N]
            y[t, j] = weight[expert_idx[t, j]] @ x[t]
    reduce  h[T, K, N], expert_idx[T, K], gates[T, K], weight[E, D, N], bias[D] -> y[T, D]
            y[t] = sum_j gates[t, j] * (weight[expert_idx[t, j]] @ h[t, j]) + bias

Letters: T tokens, K experts per token (top-k), E experts, D model width, N expert width.
Routing (router linear, top-k over logits, softmax over the k) is plain torch in the model, not an op.
The ops are inference ops: they have no autograd formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from jetmoe.errors import InputError

_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_TYPES = (torch.int32, torch.int64)


def _check(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise InputError(f"jetmoe::{name}: {message}")


def _check_map(x: Tensor, expert_idx: Tensor, weight: Tensor) -> None:
    _check("expert_map", x.dim() == 2, f"x must be [T, D], got shape {tuple(x.shape)}")
    _check("expert_map", expert_idx.dim() == 2 and expert_idx.shape[0] == x.shape[0],
           f"expert_idx must be [T={x.shape[0]}, K], got shape {tuple(expert_idx.shape)}")
    _check("expert_map", weight.dim() == 3 and weight.shape[2] == x.shape[1],
           f"weight must be [E, N, D={x.shape[1]}], got shape {tuple(weight.shape)}")
    _check("expert_map", expert_idx.dtype in _INDEX_TYPES, f"expert_idx must be int32/int64, got {expert_idx.dtype}")
    _check("expert_map", x.dtype in _FLOAT_TYPES and weight.dtype == x.dtype,
           f"x and weight must share a float type, got {x.dtype} and {weight.dtype}")


def _check_reduce(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> None:
    _check("expert_reduce", h.dim() == 3, f"h must be [T, K, N], got shape {tuple(h.shape)}")
    T, K, N = h.shape
    _check("expert_reduce", tuple(expert_idx.shape) == (T, K),
           f"expert_idx must be [{T}, {K}], got shape {tuple(expert_idx.shape)}")
    _check("expert_reduce", tuple(gates.shape) == (T, K), f"gates must be [{T}, {K}], got shape {tuple(gates.shape)}")
    _check("expert_reduce", weight.dim() == 3 and weight.shape[2] == N,
           f"weight must be [E, D, N={N}], got shape {tuple(weight.shape)}")
    _check("expert_reduce", tuple(bias.shape) == (weight.shape[1],),
           f"bias must be [D={weight.shape[1]}], got shape {tuple(bias.shape)}")
    _check("expert_reduce", expert_idx.dtype in _INDEX_TYPES,
           f"expert_idx must be int32/int64, got {expert_idx.dtype}")
    _check("expert_reduce", h.dtype in _FLOAT_TYPES and all(t.dtype == h.dtype for t in (gates, weight, bias)),
           f"h, gates, weight and bias must share a float type, got {h.dtype}, {gates.dtype}, {weight.dtype}, "
           f"{bias.dtype}")


def group_by_expert(expert_idx: Tensor, num_experts: int) -> tuple[Tensor, list[int]]:
    """Rows of the flattened (token, slot) list sorted by expert, and each expert's row count.

    The sort is stable, so within an expert rows keep token order (and a token's slots are summed in
    expert order, as HF's `index_add` does).
    """
    flat = expert_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist() if flat.numel() else [0] * num_experts
    if len(counts) > num_experts or (flat.numel() and int(flat.min()) < 0):
        raise InputError(f"expert_idx holds values outside [0, {num_experts}): min {int(flat.min())}, "
                         f"max {int(flat.max())}")
    return order, counts


def _grouped_linear(rows: Tensor, weight: Tensor, counts: list[int]) -> Tensor:
    """rows[R, in] sorted by expert -> rows @ weight[e].T per expert group; only non-empty experts run."""
    out = rows.new_empty(rows.shape[0], weight.shape[1])
    start = 0
    for e, n in enumerate(counts):
        if n:
            torch.mm(rows[start:start + n], weight[e].t(), out=out[start:start + n])
            start += n
    return out


@torch.library.custom_op("jetmoe::expert_map", mutates_args=())
def expert_map(x: Tensor, expert_idx: Tensor, weight: Tensor) -> Tensor:
    _check_map(x, expert_idx, weight)
    T, K = expert_idx.shape
    order, counts = group_by_expert(expert_idx, weight.shape[0])
    y_sorted = _grouped_linear(x[order // K], weight, counts)  # [T*K, N] in expert order
    y = torch.empty_like(y_sorted).index_copy_(0, order, y_sorted)  # back to (token, slot) order
    return y.view(T, K, weight.shape[1])


@expert_map.register_fake
def _(x: Tensor, expert_idx: Tensor, weight: Tensor) -> Tensor:
    _check_map(x, expert_idx, weight)
    return x.new_empty(x.shape[0], expert_idx.shape[1], weight.shape[1])


@torch.library.custom_op("jetmoe::expert_reduce", mutates_args=())
def expert_reduce(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    _check_reduce(h, expert_idx, gates, weight, bias)
    T, K, N = h.shape
    order, counts = group_by_expert(expert_idx, weight.shape[0])
    y_sorted = _grouped_linear(h.reshape(T * K, N)[order], weight, counts)  # [T*K, D] in expert order
    y_sorted *= gates.reshape(-1)[order, None]
    y = torch.zeros(T, weight.shape[1], dtype=h.dtype, device=h.device).index_add_(0, order // K, y_sorted)
    return y + bias


@expert_reduce.register_fake
def _(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    _check_reduce(h, expert_idx, gates, weight, bias)
    return h.new_empty(h.shape[0], weight.shape[1])


# ---- deliberately dumb references: one (token, slot) at a time, used by tests and the validator ----------

def expert_map_reference(x: Tensor, expert_idx: Tensor, weight: Tensor) -> Tensor:
    T, K = expert_idx.shape
    y = x.new_zeros(T, K, weight.shape[1])
    for t in range(T):
        for j in range(K):
            y[t, j] = F.linear(x[t], weight[int(expert_idx[t, j])])
    return y


def expert_reduce_reference(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    T, K, _ = h.shape
    y = h.new_zeros(T, weight.shape[1])
    for t in range(T):
        for j in range(K):
            y[t] += gates[t, j] * F.linear(h[t, j], weight[int(expert_idx[t, j])])
    return y + bias


def _use_gpu_kernels() -> None:
    """On a CUDA machine with triton, the Triton kernels (engines/kernels) become these ops' CUDA implementations;
    everywhere else the eager implementations above serve every device."""
    if torch.cuda.is_available():
        import engines.kernels  # noqa: F401  (registers them on import)


_use_gpu_kernels()
