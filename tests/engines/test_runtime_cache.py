"""The runtime's KV cache bookkeeping (no TensorRT): ping-pong buffers, exact views, stable addresses."""

from __future__ import annotations

import types

import pytest
import torch

from engines.profiles import resolve_limits
from engines.runtime import _KvCache
from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError

TINY = JetMoeConfig.from_preset("tiny")


def fake_engine(max_batch=2, max_seq=8):
    names = IoNames(TINY.num_hidden_layers)
    dtypes = {n: torch.float32 for pair in names.past + names.present for n in pair}
    manifest = types.SimpleNamespace(limits=resolve_limits(TINY, max_batch=max_batch, max_seq=max_seq))
    return types.SimpleNamespace(config=TINY, manifest=manifest, io_names=names, dtypes=dtypes,
                                 device=torch.device("cpu"))


def test_present_of_one_step_is_past_of_the_next():
    cache = _KvCache(fake_engine())
    cache.reset(2)
    present = cache.present(2, 5)  # prefill of 5 tokens
    assert list(present) == [n for pair in IoNames(2).present for n in pair]
    assert all(t.shape == (2, 4, 5, 16) and t.is_contiguous() for t in present.values())
    for i, t in enumerate(present.values()):
        t.copy_(torch.full_like(t, float(i)))
    cache.advance(5)
    past = cache.past(2, 5)
    assert list(past) == [n for pair in IoNames(2).past for n in pair]
    for i, (p, t) in enumerate(zip(past.values(), present.values())):
        assert p.data_ptr() == t.data_ptr() and bool((p == i).all())
    nxt = cache.present(2, 6)  # decode writes into the other buffer
    assert all(n.data_ptr() != p.data_ptr() for n, p in zip(nxt.values(), past.values()))
    cache.advance(6)
    assert cache.past(2, 6)["past_key_values.0.key"].data_ptr() == nxt["present.0.key"].data_ptr()


def test_addresses_are_stable_for_the_same_step():
    cache = _KvCache(fake_engine())
    cache.reset(1)
    first = {k: v.data_ptr() for k, v in cache.present(1, 3).items()}
    cache.reset(1)
    assert {k: v.data_ptr() for k, v in cache.present(1, 3).items()} == first


def test_batch_beyond_the_engine_is_refused():
    with pytest.raises(InputError, match="batch 3 exceeds the engine's max_batch 2"):
        _KvCache(fake_engine()).reset(3)
