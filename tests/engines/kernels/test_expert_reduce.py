"""The expert_reduce kernels (grouped GEMM + gate, then the K-slot sum + bias) against the loop reference."""

from __future__ import annotations

import pytest
import torch
from conftest import need_triton
from kernel_cases import SMALL_TILES, SUM_TILES, TILES, TOL, make_inputs

from jetmoe import InputError, ops

need_triton()
from engines.kernels import expert_reduce

CASES = [
    ((1, 13, 5, 4, 2), "random"),
    ((7, 13, 5, 8, 2), "random"),
    ((9, 40, 24, 8, 1), "random"),
    ((20, 9, 17, 5, 3), "random"),
    ((7, 13, 5, 8, 2), "few_experts"),
    ((18, 13, 5, 8, 2), "one_expert"),
    ((12, 16, 16, 4, 1), "one_expert"),
]


def check(y, h, idx, gates, w, bias, dtype):
    ref = ops.expert_reduce_reference(*(t.float().cpu() if t.is_floating_point() else t.cpu()
                                        for t in (h, idx, gates, w, bias)))
    print("max diff", float((y.float().cpu() - ref).abs().max()))
    assert y.shape == ref.shape and y.dtype == dtype
    torch.testing.assert_close(y.float().cpu(), ref, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_matches_reference(case, dtype, device):
    shape, pattern = case
    _, idx, _, h, gates, w, bias = make_inputs(*shape, dtype, pattern, device=device)
    y = expert_reduce(h, idx, gates, w, bias, config=TILES, sum_config=SUM_TILES)
    check(y, h, idx, gates, w, bias, dtype)


def test_several_tiles_and_k_steps_fp16_int32_index(device):
    _, idx, _, h, gates, w, bias = make_inputs(11, 37, 70, 6, 2, torch.float16, index_dtype=torch.int32,
                                               device=device, seed=3)
    y = expert_reduce(h, idx, gates, w, bias, config=SMALL_TILES, sum_config={"BLOCK_D": 16})
    check(y, h, idx, gates, w, bias, torch.float16)


def test_default_config_is_deterministic(device):
    _, idx, _, h, gates, w, bias = make_inputs(5, 13, 9, 8, 2, torch.float32, device=device, seed=4)
    y = expert_reduce(h, idx, gates, w, bias)
    check(y, h, idx, gates, w, bias, torch.float32)
    assert torch.equal(y, expert_reduce(h, idx, gates, w, bias))  # no atomics: bitwise repeatable


def test_input_errors_name_the_value(device):
    _, idx, _, h, gates, w, bias = make_inputs(4, 16, 8, 4, 2, torch.float32, device=device)
    with pytest.raises(InputError, match="bias"):
        expert_reduce(h, idx, gates, w, bias[:3])
    with pytest.raises(InputError, match="gates"):
        expert_reduce(h, idx, gates[:, :1], w, bias)
    with pytest.raises(InputError, match="h must be contiguous"):
        expert_reduce(h.transpose(0, 1).contiguous().transpose(0, 1), idx, gates, w, bias)


@pytest.mark.parametrize("bad", [-1, 5, 7], ids=lambda b: f"id{b}")
def test_out_of_range_ids_read_nothing_and_add_zero(bad, device):
    """E = 5 (not a power of two): ids -1, E and E_POW2 - 1 join no group, read no weight and add zero, as the
    AOT plugin kernels and the references do (TensorRT times plugins on made-up indices)."""
    from engines.kernels import expert_map

    x, idx, w_map, h, gates, w, bias = make_inputs(6, 13, 9, 5, 2, torch.float32, "random", device=device)
    idx = idx.clone()
    idx[1, 0] = bad
    idx[4, 1] = bad
    y_map = expert_map(x, idx, w_map, config=TILES)
    assert bool((y_map[1, 0] == 0).all()) and bool((y_map[4, 1] == 0).all())
    torch.testing.assert_close(y_map.cpu(), ops.expert_map_reference(x.cpu(), idx.cpu(), w_map.cpu()),
                               atol=TOL[torch.float32], rtol=TOL[torch.float32])
    check(expert_reduce(h, idx, gates, w, bias, config=TILES, sum_config=SUM_TILES), h, idx, gates, w, bias,
          torch.float32)
