"""Metrics on constructed cases: exact routing agreement, near-ties flagged not failed, KL and top-k."""

from __future__ import annotations

import numpy as np

from validate.metrics import logit_stats, routing_stats


def select(logits: np.ndarray, k: int = 2) -> np.ndarray:
    """Top-k experts, the lower index first among equal logits (the tie rule)."""
    return np.argsort(-logits, axis=-1, kind="stable")[:, :k]


def test_routing_agreement_is_exact_on_a_constructed_case():
    ref = np.array([[5.0, 4.0, 1.0, 0.0], [0.0, 1.0, 9.0, 8.0], [3.0, 0.0, 2.0, 7.0]])
    test = ref.copy()
    test[2] = [0.0, 3.0, 2.0, 7.0]  # token 2: {0, 3} -> {1, 3}, one of its two slots differs
    stats = routing_stats(ref, select(ref), select(test), top_k=2, tie_margin=1e-3, layer=4, router="moe")
    assert (stats.layer, stats.router, stats.decisions, stats.near_ties) == (4, "moe", 6, 0)
    assert stats.agree == 5 / 6
    assert routing_stats(ref, select(ref), select(ref), 2, 1e-3, 0, "moa").agree == 1.0


def test_a_near_tie_flip_is_flagged_not_counted():
    ref = np.array([[5.0, 2.0000001, 2.0, 0.0], [4.0, 3.0, 0.0, 1.0]])  # token 0: 2nd vs 3rd differ by 1e-7
    test = np.array([[5.0, 2.0, 2.0000001, 0.0], [4.0, 3.0, 0.0, 1.0]])  # the tie flips
    stats = routing_stats(ref, select(ref), select(test), top_k=2, tie_margin=1e-4, layer=0, router="moa")
    assert stats.near_ties == 1 and stats.near_tie_flips == 1
    assert stats.decisions == 2 and stats.agree == 1.0
    strict = routing_stats(ref, select(ref), select(test), top_k=2, tie_margin=0.0, layer=0, router="moa")
    assert strict.near_ties == 0 and strict.agree == 3 / 4


def test_an_exact_tie_resolved_differently_is_a_real_flip():
    """Both backends see the same logits with an exact tie at the k-th place; the flip is read from what each
    backend actually selected (re-deriving both selections from logits would hide it)."""
    logits = np.array([[6.0, 3.0, 3.0, 1.0]])
    ours, other_rule = np.array([[0, 1]]), np.array([[0, 2]])  # lower index first, and the other choice
    stats = routing_stats(logits, ours, other_rule, top_k=2, tie_margin=1e-4, layer=1, router="moe")
    assert stats.near_ties == 1 and stats.near_tie_flips == 1


def test_logit_stats():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((6, 50))
    same = logit_stats(ref, ref)
    assert same.max_abs == 0 and same.top1 == 1 and same.top5 == 1 and same.kl == 0 and abs(same.cosine - 1) < 1e-12
    shifted = logit_stats(ref, ref + 3.0)  # a constant shift leaves the distribution alone
    assert abs(shifted.max_abs - 3.0) < 1e-9 and shifted.kl < 1e-12 and shifted.top1 == 1
    swapped = ref.copy()
    for row in swapped:
        a, b = np.argsort(-row)[:2]
        row[a], row[b] = row[b], row[a]
    stats = logit_stats(ref, swapped)
    assert stats.top1 == 0 and stats.top5 == 1 and stats.kl > 0
