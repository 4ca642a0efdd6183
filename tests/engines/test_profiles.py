"""Optimization profiles: (min, opt, max) per graph input, limits checked against the model."""

from __future__ import annotations

import pytest

from engines.profiles import Profile, make_profiles, resolve_limits, select_profile
from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.io_names import IoNames

TINY = JetMoeConfig.from_preset("tiny")  # 2 layers, 4 kv heads x 16, context 512
NAMES = IoNames(TINY.num_hidden_layers)


def test_defaults_come_from_the_config():
    limits = resolve_limits(TINY, max_batch=1, max_seq=None)
    got = (limits.max_batch, limits.max_seq, limits.opt_batch, limits.opt_seq, limits.opt_past)
    assert got == (1, 512, 1, 256, 255)


def test_prefill_and_decode_shapes_for_every_input():
    prefill, decode = make_profiles(TINY, NAMES, resolve_limits(TINY, max_batch=4, max_seq=100, opt_batch=2,
                                                                opt_seq=17, opt_past=33))
    assert list(prefill.shapes) == list(decode.shapes) == NAMES.inputs
    assert prefill.shapes["input_ids"] == ((1, 1), (2, 17), (4, 100))
    assert prefill.shapes["attention_mask"] == ((1, 1), (2, 17), (4, 100))  # total = past 0 + seq
    assert prefill.shapes["position_ids"] == prefill.shapes["input_ids"]
    assert prefill.shapes["past_key_values.1.value"] == ((1, 4, 0, 16), (2, 4, 0, 16), (4, 4, 0, 16))
    assert decode.shapes["input_ids"] == ((1, 1), (2, 1), (4, 1))
    assert decode.shapes["attention_mask"] == ((1, 1), (2, 34), (4, 100))  # past + 1
    assert decode.shapes["past_key_values.0.key"] == ((1, 4, 0, 16), (2, 4, 33, 16), (4, 4, 99, 16))


def test_sequence_classification_has_one_profile_without_cache():
    limits = resolve_limits(TINY, max_batch=1, max_seq=8)
    (profile,) = make_profiles(TINY, IoNames(2, "sequence-classification"), limits)
    assert profile.name == "forward" and list(profile.shapes) == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_seq": 513}, "max_seq 513 exceeds the model's max_position_embeddings 512"),
    ({"max_batch": 0}, "max_batch must be a positive integer, got 0"),
    ({"max_seq": 0}, "max_seq must be a positive integer, got 0"),
    ({"max_batch": 2, "opt_batch": 3}, "opt_batch must be an integer in [1, 2] (max_batch), got 3"),
    ({"max_seq": 10, "opt_seq": 11}, "opt_seq must be an integer in [1, 10] (max_seq), got 11"),
    ({"max_seq": 10, "opt_past": 10}, "opt_past must be an integer in [0, 9] (max_seq - 1), got 10"),
    ({"max_batch": True}, "max_batch must be a positive integer, got True"),
])
def test_bad_limits_are_refused_with_the_value(kwargs, message):
    with pytest.raises(InputError) as e:
        resolve_limits(TINY, **{"max_batch": 1, "max_seq": None, **kwargs})
    assert message in str(e.value)


def _shapes(B, S, P):
    shapes = {"input_ids": (B, S), "attention_mask": (B, P + S), "position_ids": (B, S)}
    shapes.update({n: (B, 4, P, 16) for pair in NAMES.past for n in pair})
    return shapes


def test_select_profile_by_shape():
    profiles = make_profiles(TINY, NAMES, resolve_limits(TINY, max_batch=3, max_seq=64))
    assert select_profile(profiles, _shapes(3, 12, 0)) == 0  # prefill
    assert select_profile(profiles, _shapes(1, 1, 0)) == 0  # one-token prompt: prefill covers it first
    assert select_profile(profiles, _shapes(2, 1, 63)) == 1  # decode up to max_seq tokens in all
    with pytest.raises(InputError, match=r"no optimization profile .* covers .*input_ids.*\(2, 5\)"):
        select_profile(profiles, _shapes(2, 5, 7))  # chunked prefill
    with pytest.raises(InputError, match="no optimization profile"):
        select_profile(profiles, _shapes(4, 1, 3))  # batch too large
    with pytest.raises(InputError, match="no optimization profile"):
        select_profile(profiles, _shapes(1, 1, 64))  # 65 tokens
    with pytest.raises(InputError, match=r"missing engine inputs \['position_ids'"):
        select_profile(profiles, {k: v for k, v in _shapes(1, 1, 1).items() if k != "position_ids"})


def test_profile_round_trips_through_dict():
    for profile in make_profiles(TINY, NAMES, resolve_limits(TINY, max_batch=1, max_seq=None)):
        assert Profile.from_dict(profile.to_dict()) == profile
