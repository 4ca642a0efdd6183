"""The runner contract (jetmoe/runner.py): every backend's `infer` refuses what the eager model refuses, and the
KV cache is a value. Checked on the eager runner and on a stand-in backend (what ONNX Runtime and TensorRT
inherit); tests/export/test_onnx_runtime.py repeats the refusals through a real ONNX Runtime session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetmoe import EagerRunner, InputError, Runner
from jetmoe.generate import generate
from jetmoe.io_names import IoNames
from tests.conftest import CONFIGS, make_model

CONFIG = CONFIGS["k1"]  # vocab 97, max_position_embeddings 64, 1 layer


class Recorder(Runner):
    """A backend that runs nothing: it records what reached infer_impl (as ONNX Runtime or TensorRT would get it)."""

    def __init__(self, max_seq=None, max_batch=None) -> None:
        super().__init__()
        self.seen = []
        self.limits = (max_seq, max_batch)

    def activate_impl(self) -> None:
        self.config, self.io_names = CONFIG, IoNames(CONFIG.num_hidden_layers)
        self.max_seq, self.max_batch = self.limits

    def infer_impl(self, feeds):
        self.seen.append(feeds)
        return {}


def feeds(batch=2, seq=3, past=0, ids=None, mask=None):
    ids = torch.full((batch, seq), 5) if ids is None else torch.tensor(ids)
    cache = torch.zeros(batch, CONFIG.num_key_value_heads, past, CONFIG.kv_channels)
    return {"input_ids": ids, "attention_mask": torch.ones(batch, past + seq, dtype=torch.long) if mask is None
            else mask, "position_ids": torch.arange(past, past + seq).expand(batch, seq),
            **{n: cache for pair in IoNames(1).past for n in pair}}


@pytest.fixture(params=["eager", "stand-in"])
def runner(request):
    backend = EagerRunner(make_model(CONFIG)) if request.param == "eager" else Recorder()
    with backend:
        yield backend


@pytest.mark.parametrize("change, message", [
    (dict(ids=[[1, -3, 2]]), r"token id -3 is outside the vocabulary \[0, 97\)"),
    (dict(ids=[[1, 97, 2]]), r"token id 97 is outside the vocabulary \[0, 97\)"),
    (dict(seq=65, batch=1), r"sequence length 65 \(cached 0 \+ new 65\) exceeds max_position_embeddings=64"),
    (dict(seq=1, past=64, batch=1), r"sequence length 65 \(cached 64 \+ new 1\)"),
    # a decode-step mask of one column: it would broadcast and un-mask the left padding
    (dict(seq=1, past=4, mask=torch.ones(2, 1, dtype=torch.long)),
     r"attention_mask must be \[batch=2, cached\+new=5\]"),
    (dict(mask=torch.full((2, 3), 2)), "attention_mask must hold only 0 and 1"),
])
def test_every_backend_refuses_what_eager_refuses(runner, change, message):
    with pytest.raises(InputError, match=message):
        runner.infer(feeds(**change))
    assert not getattr(runner, "seen", [])  # nothing reached the backend


def test_names_ranks_and_consistency_are_checked(runner):
    good = feeds()
    with pytest.raises(InputError, match=r"unknown \['input_idz'\]"):
        runner.infer({**good, "input_idz": good["input_ids"]})
    with pytest.raises(InputError, match=r"missing \['position_ids'\]"):
        runner.infer({k: v for k, v in good.items() if k != "position_ids"})
    with pytest.raises(InputError, match="past_key_values.0.key must be"):
        runner.infer({**good, "past_key_values.0.key": torch.zeros(2, 1, 0, CONFIG.kv_channels)})
    with pytest.raises(InputError, match="input_ids must be an integer|must hold integer token ids"):
        runner.infer({**good, "input_ids": good["input_ids"].float()})
    with pytest.raises(InputError, match=r"position_ids must be \[batch=2, seq=3\]"):
        runner.infer({**good, "position_ids": good["position_ids"][:, :2]})


def test_engine_limits_are_checked_before_running():
    with Recorder(max_seq=8, max_batch=2) as backend:
        with pytest.raises(InputError, match=r"exceeds max_seq=8"):
            backend.infer(feeds(batch=1, seq=9))
        with pytest.raises(InputError, match="batch 3 exceeds max_batch=2"):
            backend.infer(feeds(batch=3))
        with pytest.raises(InputError, match="max_new_tokens=6 = 9 exceeds max_seq=8"):
            generate(backend, [[1, 2, 3]], max_new_tokens=6)
        assert not backend.seen


def test_numpy_feeds_become_the_graph_types():
    with Recorder() as backend:
        raw = {k: v.numpy().astype(np.int32) if k == "input_ids" else v.numpy() for k, v in feeds().items()}
        backend.infer(raw)
        (seen,) = backend.seen
    assert seen["input_ids"].dtype == torch.int64 and seen["past_key_values.0.key"].dtype == torch.float32


def test_inactive_runner_says_so():
    with pytest.raises(InputError, match="activate the runner first"):
        Recorder().infer(feeds())


def test_the_cache_is_a_value():
    """Steps from one cache give the same answer however often they run (benchmarks and teacher forcing rely on
    it), and a runner never writes into what it was fed."""
    with EagerRunner(make_model(CONFIG)) as runner:
        prefill = runner.infer(feeds(batch=1, seq=4))
        past = runner.carry_past(prefill)
        before = {k: v.clone() for k, v in past.items()}
        step = {"input_ids": torch.tensor([[7]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
                "position_ids": torch.tensor([[4]]), **past}
        first = runner.infer(step)["logits"]
        again = runner.infer(step)["logits"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert all(torch.equal(before[k], past[k]) for k in past)
