"""Generation: greedy equals an uncached argmax loop; sampling is seeded; stops; streaming; bad options."""

from __future__ import annotations

import pytest
import torch

from jetmoe import InputError
from jetmoe.generate import choose_tokens
from tests.conftest import CONFIGS, make_model

CONFIG = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def model():
    return make_model(CONFIG, seed=11)


def argmax_without_cache(model, prompt, steps):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            token = model(ids, use_cache=False).logits[0, -1].argmax()
            ids = torch.cat((ids, token.view(1, 1)), dim=1)
    return ids[0, len(prompt):].tolist()


def test_greedy_uses_the_cache_correctly(model):
    prompts = [[7, 8, 9, 10, 11, 12], [100, 3], [400]]
    got = model.generate(prompts, max_new_tokens=10, eos_token_id=None)
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == argmax_without_cache(model, prompt, 10)


def test_eos_stops_a_row_and_is_kept(model):
    first = model.generate([[5, 6, 7]], max_new_tokens=3, eos_token_id=None)[0]
    got = model.generate([[5, 6, 7], [9, 9]], max_new_tokens=6, eos_token_id=first[1])
    assert got[0] == first[:2]
    assert len(got[1]) == 6 or got[1][-1] == first[1]


def test_streamer_sees_every_step(model):
    seen = []
    got = model.generate([[1, 2], [3]], max_new_tokens=4, eos_token_id=None, streamer=seen.append)
    assert len(seen) == 4 and [[s[r] for s in seen] for r in range(2)] == got


def test_sampling_is_seeded(model):
    a = model.generate([[1, 2, 3]], max_new_tokens=8, do_sample=True, temperature=1.5, seed=0, eos_token_id=None)
    b = model.generate([[1, 2, 3]], max_new_tokens=8, do_sample=True, temperature=1.5, seed=0, eos_token_id=None)
    c = model.generate([[1, 2, 3]], max_new_tokens=8, do_sample=True, temperature=1.5, seed=1, eos_token_id=None)
    assert a == b and a != c


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    greedy = model.generate([[4, 5]], max_new_tokens=6, eos_token_id=None)
    assert model.generate([[4, 5]], max_new_tokens=6, do_sample=True, top_k=1, seed=3, eos_token_id=None) == greedy
    assert model.generate([[4, 5]], max_new_tokens=6, do_sample=True, top_p=1e-6, seed=3, eos_token_id=None) == greedy


def test_filters_keep_only_the_allowed_tokens():
    logits = torch.tensor([[0.0, 3.0, 2.9, 1.0, -5.0]]).repeat(200, 1)
    gen = torch.Generator().manual_seed(0)
    top2 = choose_tokens(logits, True, 1.0, 2, 1.0, gen)
    assert set(top2.tolist()) == {1, 2}
    # p(1) ~ 0.47, p(2) ~ 0.43: top_p 0.6 keeps both, drops the rest
    nucleus = choose_tokens(logits, True, 1.0, 0, 0.6, gen)
    assert set(nucleus.tolist()) == {1, 2}


@pytest.mark.parametrize("options, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer, got 0"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
])
def test_bad_options(model, options, message):
    with pytest.raises(InputError, match=message):
        model.generate([[1, 2]], **options)


def test_bad_prompts(model):
    with pytest.raises(InputError, match=r"at least one token; got lengths \[2, 0\]"):
        model.generate([[1, 2], []])
    with pytest.raises(InputError, match=r"token id 600 is outside the vocabulary \[0, 512\)"):
        model.generate([[1, 600]])
    with pytest.raises(InputError, match="exceeds max_position_embeddings=512"):
        model.generate([[1] * 500], max_new_tokens=20)
