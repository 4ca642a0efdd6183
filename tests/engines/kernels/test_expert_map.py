"""The expert_map grouped-GEMM kernel against `jetmoe.ops.expert_map_reference` (interpreted on CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import need_triton
from kernel_cases import SMALL_TILES, TILES, TOL, make_inputs

from jetmoe import InputError, ops

need_triton()
from engines.kernels import expert_map

# (T, D, N, E, K): 1 token, odd widths, K = 1 and 2 (and 3), more tokens than one M block
CASES = [
    ((1, 13, 5, 4, 2), "random"),
    ((7, 13, 5, 8, 2), "random"),
    ((9, 24, 40, 8, 1), "random"),
    ((20, 17, 9, 5, 3), "random"),
    ((7, 13, 5, 8, 2), "few_experts"),  # experts 2..7 get no tokens (and hold NaN weights)
    ((18, 13, 5, 8, 2), "one_expert"),  # every token on expert 7: its group spans two M blocks
    ((12, 16, 16, 4, 1), "one_expert"),  # K = 1, all on one expert
]


def check(y, x, idx, w, dtype):
    ref = ops.expert_map_reference(x.float().cpu(), idx.cpu(), w.float().cpu())
    print("max diff", float((y.float().cpu() - ref).abs().max()))
    assert y.shape == ref.shape and y.dtype == dtype
    torch.testing.assert_close(y.float().cpu(), ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_matches_reference(case, dtype, device):
    shape, pattern = case
    x, idx, w, *_ = make_inputs(*shape, dtype, pattern, device=device)
    check(expert_map(x, idx, w, config=TILES), x, idx, w, dtype)


def test_several_tiles_and_k_steps_fp16_int32_index(device):
    x, idx, w, *_ = make_inputs(11, 70, 37, 6, 2, torch.float16, index_dtype=torch.int32, device=device, seed=3)
    check(expert_map(x, idx, w, config=SMALL_TILES), x, idx, w, torch.float16)


def test_default_config(device):
    x, idx, w, *_ = make_inputs(3, 13, 5, 8, 2, torch.float32, device=device, seed=4)
    check(expert_map(x, idx, w), x, idx, w, torch.float32)


def test_no_tokens(device):
    x, idx, w, *_ = make_inputs(1, 8, 4, 4, 2, torch.float32, device=device)
    y = expert_map(x[:0], idx[:0], w)
    assert y.shape == (0, 2, 4)


def test_input_errors_name_the_value(device):
    x, idx, w, *_ = make_inputs(4, 16, 8, 4, 2, torch.float32, device=device)
    with pytest.raises(InputError, match="weight"):
        expert_map(x, idx, w[:, :, :8])
    with pytest.raises(InputError, match="weight"):
        expert_map(x, idx, w.to(torch.bfloat16))
    with pytest.raises(InputError, match="expert_idx"):
        expert_map(x, idx.float(), w)
    with pytest.raises(InputError, match="x must be contiguous"):
        expert_map(torch.randn(16, 4, device=device).t(), idx, w)
