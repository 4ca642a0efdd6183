"""Forward-pass input checks: each bad input is a JetMoeError subclass naming the value."""

from __future__ import annotations

import pytest
import torch

from jetmoe import InputError, JetMoeError
from tests.conftest import CONFIGS, make_model

CONFIG = CONFIGS["k1"]  # vocab 97, max_position_embeddings 64


@pytest.fixture(scope="module")
def model():
    return make_model(CONFIG)


def test_token_ids_outside_the_vocabulary(model):
    with pytest.raises(InputError, match=r"token id 97 is outside the vocabulary \[0, 97\)"):
        model(torch.tensor([[1, 97, 3]]))
    with pytest.raises(InputError, match="token id -1"):
        model(torch.tensor([[-1, 2]]))


def test_sequences_longer_than_max_position_embeddings(model):
    with pytest.raises(InputError,
                       match=r"sequence length 65 \(cached 0 \+ new 65\) exceeds max_position_embeddings=64"):
        model(torch.ones(1, 65, dtype=torch.long))
    with torch.no_grad():
        past = model(torch.ones(1, 60, dtype=torch.long), use_cache=True).past_key_values
    with pytest.raises(InputError, match=r"sequence length 65 \(cached 60 \+ new 5\)"):
        model(torch.ones(1, 5, dtype=torch.long), past_key_values=past)
    with pytest.raises(InputError, match="position id 64 exceeds"):
        model(torch.ones(1, 2, dtype=torch.long), position_ids=torch.tensor([[63, 64]]))


def test_mask_and_argument_mistakes(model):
    with pytest.raises(InputError, match=r"attention_mask must be \[batch=1, cached\+new=3\], got \(1, 4\)"):
        model(torch.ones(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(InputError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(InputError, match=r"input_ids must be \[batch, seq\]"):
        model(torch.ones(3, dtype=torch.long))
    assert issubclass(InputError, JetMoeError)


def test_inputs_embeds_equal_input_ids(model):
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        a = model(ids).logits
        b = model(inputs_embeds=model.model.embed_tokens(ids)).logits
    torch.testing.assert_close(a, b)


def test_return_dict_false_gives_hf_tuple_order(model):
    ids = torch.tensor([[3, 1, 4]])
    with torch.no_grad():
        out = model(ids, labels=ids, output_router_logits=True, use_cache=False, return_dict=False)
    loss, aux_loss, logits, router_logits = out
    assert loss.dim() == 0 and aux_loss.dim() == 0 and logits.shape == (1, 3, 97) and len(router_logits) == 2
