"""The expert-dispatch ops against their dumb loop references, and torch.library.opcheck."""

from __future__ import annotations

import pytest
import torch

from jetmoe import InputError, ops
from jetmoe.model import TopKRouter

# (T, D, N, E, K): 1 token, odd and prime widths, k = 1, 2, 3
SHAPES = [(1, 8, 12, 4, 2), (7, 13, 5, 8, 2), (16, 32, 24, 8, 1), (33, 17, 9, 5, 3), (64, 48, 40, 8, 2)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def routing(T: int, E: int, K: int, gen: torch.Generator, pattern: str = "random") -> torch.Tensor:
    if pattern == "one_expert":  # every token's first slot on expert E-1, the rest on distinct others
        return torch.stack([torch.full((T,), E - 1)] + [torch.full((T,), j) for j in range(K - 1)], dim=1)
    if pattern == "few_experts":  # experts beyond K get no tokens
        return torch.stack([torch.randperm(K, generator=gen) for _ in range(T)])
    return torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])


def inputs(T, D, N, E, K, dtype, pattern="random", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen).to(dtype)
    idx = routing(T, E, K, gen, pattern)
    w_map = (torch.randn(E, N, D, generator=gen) / D**0.5).to(dtype)
    h = torch.randn(T, K, N, generator=gen).to(dtype)
    gates = torch.softmax(torch.randn(T, K, generator=gen), -1).to(dtype)
    w_red = (torch.randn(E, D, N, generator=gen) / N**0.5).to(dtype)
    bias = torch.randn(D, generator=gen).to(dtype)
    return x, idx, w_map, h, gates, w_red, bias


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("pattern", ["random", "one_expert", "few_experts"])
def test_ops_match_reference(shape, dtype, pattern):
    x, idx, w_map, h, gates, w_red, bias = inputs(*shape, dtype, pattern)
    y = ops.expert_map(x, idx, w_map)
    ref = ops.expert_map_reference(x.float(), idx, w_map.float())
    print(shape, dtype, pattern, "map max diff", float((y.float() - ref).abs().max()))
    assert y.shape == ref.shape and y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])
    z = ops.expert_reduce(h, idx, gates, w_red, bias)
    ref = ops.expert_reduce_reference(h.float(), idx, gates.float(), w_red.float(), bias.float())
    print(shape, dtype, pattern, "reduce max diff", float((z.float() - ref).abs().max()))
    assert z.shape == ref.shape and z.dtype == dtype
    torch.testing.assert_close(z.float(), ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_int32_expert_idx_gives_the_same_result():
    x, idx, w_map, h, gates, w_red, bias = inputs(*SHAPES[1], torch.float32)
    torch.testing.assert_close(ops.expert_map(x, idx.int(), w_map), ops.expert_map(x, idx, w_map))
    torch.testing.assert_close(ops.expert_reduce(h, idx.int(), gates, w_red, bias),
                               ops.expert_reduce(h, idx, gates, w_red, bias))


def test_unselected_experts_are_not_computed():
    """NaN weights in experts nobody routes to must not reach the output."""
    x, idx, w_map, h, gates, w_red, bias = inputs(5, 8, 6, 8, 2, torch.float32, "few_experts")
    w_map[2:] = float("nan")
    w_red[2:] = float("nan")
    assert torch.isfinite(ops.expert_map(x, idx, w_map)).all()
    assert torch.isfinite(ops.expert_reduce(h, idx, gates, w_red, bias)).all()


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=str)
def test_opcheck(shape):
    x, idx, w_map, h, gates, w_red, bias = inputs(*shape, torch.float32)
    torch.library.opcheck(torch.ops.jetmoe.expert_map.default, (x, idx, w_map))
    torch.library.opcheck(torch.ops.jetmoe.expert_reduce.default, (h, idx, gates, w_red, bias))


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, idx, w = torch.empty(9, 16), torch.zeros(9, 2, dtype=torch.long), torch.empty(8, 24, 16)
        assert ops.expert_map(x, idx, w).shape == (9, 2, 24)
        h, g, w2, b = torch.empty(9, 2, 24), torch.empty(9, 2), torch.empty(8, 16, 24), torch.empty(16)
        assert ops.expert_reduce(h, idx, g, w2, b).shape == (9, 16)


def test_bad_inputs_name_the_value():
    x, idx, w_map, h, gates, w_red, bias = inputs(4, 8, 6, 4, 2, torch.float32)
    with pytest.raises(InputError, match=r"weight must be \[E, N, D=8\], got shape \(4, 6, 7\)"):
        ops.expert_map(x, idx, w_map[..., :7])
    with pytest.raises(InputError, match=r"outside \[0, 4\).*max 9"):
        ops.expert_map(x, idx.clone().fill_(9), w_map)
    with pytest.raises(InputError, match="expert_idx must be int32/int64"):
        ops.expert_map(x, idx.float(), w_map)
    with pytest.raises(InputError, match=r"bias must be \[D=8\]"):
        ops.expert_reduce(h, idx, gates, w_red, bias[:5])
    with pytest.raises(InputError, match="gates must be fp32/fp16/bf16, got torch.float64"):
        ops.expert_reduce(h, idx, gates.double(), w_red, bias)
    with pytest.raises(InputError, match="share a float type"):
        ops.expert_reduce(h, idx, gates.half(), w_red, bias)


def test_router_ties_pick_the_lower_expert_index():
    """The tie rule of every backend (ONNX TopK's): among equal logits the lower expert index comes first."""
    router = TopKRouter(hidden=4, num_experts=6, top_k=2)
    with torch.no_grad():
        router.layer.weight.copy_(torch.tensor([[1.0, 0, 0, 0]] * 3 + [[0.5, 0, 0, 0]] * 3))  # experts 0-2 tie
    x = torch.tensor([[2.0, 1.0, 0.0, 0.0], [-2.0, 0.0, 0.0, 0.0]])
    gates, idx, logits = router(x)
    assert idx.tolist() == [[0, 1], [3, 4]]  # row 0: 0, 1, 2 tie at the top; row 1: 3, 4, 5 tie
    wide = TopKRouter(hidden=1, num_experts=64, top_k=3)  # a width where torch.topk's own order may differ
    with torch.no_grad():
        wide.layer.weight.fill_(1.0)
    assert wide(torch.ones(5, 1))[1].tolist() == [[0, 1, 2]] * 5
    torch.testing.assert_close(gates, torch.full((2, 2), 0.5))  # tied logits -> equal gates
