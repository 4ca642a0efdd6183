"""`align_by_expert`: static sizes, every (token, slot) row exactly once, padding = the sentinel R."""

from __future__ import annotations

import pytest
import torch
from conftest import need_triton
from kernel_cases import routing

from jetmoe.errors import InputError

need_triton()
from engines.kernels import align_by_expert, align_by_expert_reference

# (T, E, K, pattern, BLOCK_M)
CASES = [
    (1, 8, 2, "random", 16),
    (7, 8, 2, "few_experts", 16),
    (33, 5, 3, "random", 16),
    (40, 8, 2, "one_expert", 16),
    (20, 4, 1, "random", 32),
    (300, 8, 2, "random", 16),  # more rows than one BLOCK_R chunk of the default config
]


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_alignment(case, index_dtype, device):
    T, E, K, pattern, block_m = case
    idx = routing(T, E, K, torch.Generator().manual_seed(T), pattern).to(index_dtype).to(device)
    sorted_rows, block_expert, num_padded = (t.cpu() for t in align_by_expert(idx, E, block_m))
    R = T * K
    P = R + E * (block_m - 1)
    # static sizes and types
    assert sorted_rows.shape == (P,) and block_expert.shape == (-(-P // block_m),) and num_padded.shape == (1,)
    assert sorted_rows.dtype == block_expert.dtype == num_padded.dtype == torch.int32
    # every row exactly once, the rest the sentinel
    real = sorted_rows[sorted_rows != R]
    assert sorted(real.tolist()) == list(range(R))
    used = int(num_padded)
    assert used % block_m == 0 and (sorted_rows[used:] == R).all()
    # each block holds its expert's rows only, in token order; blocks past the used ones are -1
    flat = idx.reshape(-1).cpu()
    for b, e in enumerate(block_expert.tolist()):
        rows = sorted_rows[b * block_m:(b + 1) * block_m]
        rows = rows[rows != R]
        if b * block_m >= used:
            assert e == -1
        else:
            assert (flat[rows.long()] == e).all() and rows.tolist() == sorted(rows.tolist())
    # and exactly the dumb reference's answer
    reference = align_by_expert_reference(idx.cpu(), E, block_m)
    for got, ref in zip((sorted_rows, block_expert, num_padded), reference, strict=True):
        assert torch.equal(got, ref)


def test_bad_arguments(device):
    idx = torch.zeros(2, 2, dtype=torch.int64, device=device)
    with pytest.raises(InputError, match="block_m"):
        align_by_expert(idx, 4, 24)
    with pytest.raises(InputError, match="expert_idx"):
        align_by_expert(idx.float(), 4, 16)
    with pytest.raises(InputError, match="num_experts"):
        align_by_expert(idx, 0, 16)
