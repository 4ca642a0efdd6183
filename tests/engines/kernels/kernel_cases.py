"""Shared inputs for the kernel tests (a helper module, not a test module)."""

from __future__ import annotations

import torch

# Big tiles and small shapes: the interpreter's cost is (programs x loop iterations).
TILES = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2}
# Small tiles on purpose: several N blocks and K iterations, masked edges in both.
SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}
SUM_TILES = {"BLOCK_D": 64, "num_warps": 4}

# Tolerances against the fp32 loop reference on the same (rounded) inputs. fp32: the kernels accumulate in
# fp32 with IEEE dots (no tf32), so only summation order differs. 16-bit: the output is rounded once to the
# type (bf16 has 8 bits of mantissa: relative 2^-8 ~ 4e-3), so 2e-2 / 3e-3 leave room for a few roundings.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def routing(T: int, E: int, K: int, gen: torch.Generator, pattern: str) -> torch.Tensor:
    if pattern == "one_expert":  # every token's first slot on expert E-1, the other slots on 0, 1, ...
        return torch.stack([torch.full((T,), E - 1)] + [torch.full((T,), j) for j in range(K - 1)], dim=1)
    if pattern == "few_experts":  # only experts 0..K-1 get tokens; the rest none
        return torch.stack([torch.randperm(K, generator=gen) for _ in range(T)])
    return torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])


def make_inputs(T, D, N, E, K, dtype, pattern="random", seed=0, index_dtype=torch.int64, device="cpu"):
    """x, idx, w_map [E, N, D], h [T, K, N], gates, w_red [E, D, N], bias; unused experts' weights are NaN."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen)
    idx = routing(T, E, K, gen, pattern).to(index_dtype)
    w_map = torch.randn(E, N, D, generator=gen) / D**0.5
    h = torch.randn(T, K, N, generator=gen)
    gates = torch.softmax(torch.randn(T, K, generator=gen), -1)
    w_red = torch.randn(E, D, N, generator=gen) / N**0.5
    bias = torch.randn(D, generator=gen)
    unused = torch.ones(E, dtype=torch.bool)
    unused[idx.reshape(-1)] = False
    w_map[unused] = float("nan")  # only the selected experts may be read
    w_red[unused] = float("nan")
    cast = [t.to(dtype).to(device) for t in (x, w_map, h, gates, w_red, bias)]
    x, w_map, h, gates, w_red, bias = cast
    return x, idx.to(device), w_map, h, gates, w_red, bias
