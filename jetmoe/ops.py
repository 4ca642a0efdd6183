"""The expert-dispatch ops: `jetmoe::expert_map` and `jetmoe::expert_reduce`.

One contract (jetmoe/op_contract.py, docs/ops.md) shared by the torch custom ops here, the ONNX nodes and their
local-function bodies (export/), the Triton kernels and the TensorRT plugins (engines/). Both MoA and MoE use them:

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
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, OpSpec


def check(op: OpSpec, *tensors: Tensor) -> dict[str, int]:
    """The contract's shape and dtype checks (InputError); the letter sizes. Shared by the kernels' launchers."""
    return op.check([t.shape for t in tensors], [t.dtype for t in tensors])


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


@torch.library.custom_op(EXPERT_MAP.qualified_name, mutates_args=())
def expert_map(x: Tensor, expert_idx: Tensor, weight: Tensor) -> Tensor:
    check(EXPERT_MAP, x, expert_idx, weight)
    T, K = expert_idx.shape
    order, counts = group_by_expert(expert_idx, weight.shape[0])
    y_sorted = _grouped_linear(x[order // K], weight, counts)  # [T*K, N] in expert order
    y = torch.empty_like(y_sorted).index_copy_(0, order, y_sorted)  # back to (token, slot) order
    return y.view(T, K, weight.shape[1])


@expert_map.register_fake
def _(x: Tensor, expert_idx: Tensor, weight: Tensor) -> Tensor:
    (shape,) = EXPERT_MAP.output_shapes(check(EXPERT_MAP, x, expert_idx, weight))
    return x.new_empty(shape)


@torch.library.custom_op(EXPERT_REDUCE.qualified_name, mutates_args=())
def expert_reduce(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    check(EXPERT_REDUCE, h, expert_idx, gates, weight, bias)
    T, K, N = h.shape
    order, counts = group_by_expert(expert_idx, weight.shape[0])
    y_sorted = _grouped_linear(h.reshape(T * K, N)[order], weight, counts)  # [T*K, D] in expert order
    y_sorted *= gates.reshape(-1)[order, None]
    y = torch.zeros(T, weight.shape[1], dtype=h.dtype, device=h.device).index_add_(0, order // K, y_sorted)
    return y + bias


@expert_reduce.register_fake
def _(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    (shape,) = EXPERT_REDUCE.output_shapes(check(EXPERT_REDUCE, h, expert_idx, gates, weight, bias))
    return h.new_empty(shape)


# ---- deliberately dumb references: one (token, slot) at a time, used by tests and the validator ----------
# An expert id outside [0, E) contributes zero (a zero row for map), which is what the TensorRT plugin kernels
# do with the made-up inputs TensorRT times them on; the ops above refuse such ids (InputError).

def expert_map_reference(x: Tensor, expert_idx: Tensor, weight: Tensor) -> Tensor:
    T, K = expert_idx.shape
    y = x.new_zeros(T, K, weight.shape[1])
    for t in range(T):
        for j in range(K):
            e = int(expert_idx[t, j])
            if 0 <= e < weight.shape[0]:
                y[t, j] = F.linear(x[t], weight[e])
    return y


def expert_reduce_reference(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    T, K, _ = h.shape
    y = h.new_zeros(T, weight.shape[1])
    for t in range(T):
        for j in range(K):
            e = int(expert_idx[t, j])
            if 0 <= e < weight.shape[0]:
                y[t] += gates[t, j] * F.linear(h[t, j], weight[e])
    return y + bias
