"""What "still JetMoe" means, measured: logit statistics, routing agreement with near-ties set apart, and
where along the layers an error starts.

Plain absolute/relative error statistics come from Polygraphy's comparator; the language-model and MoE
metrics (top-k agreement, KL, routing decisions, sub-block localisation) are computed here.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jetmoe.io_names import IoNames
from validate.tolerances import Tolerances


@dataclasses.dataclass
class LogitStats:
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    cosine: float  # mean over tokens
    top1: float  # fraction of tokens whose argmax agrees
    top5: float  # mean overlap of the top-5 sets, 0..1
    kl: float  # mean KL(p_ref || p) per token, nats
    scale: float  # max |reference logit|


@dataclasses.dataclass
class RoutingStats:
    layer: int
    router: str  # "moa" or "moe"
    decisions: int  # (token, slot) decisions compared, near-ties excluded
    agree: float  # fraction of those that agree (1.0 when there are none)
    near_ties: int  # tokens whose k-th vs (k+1)-th reference margin is below the tie margin
    near_tie_flips: int  # of those, how many chose a different expert set


@dataclasses.dataclass
class Divergence:
    layer: int | None  # None: the embeddings
    block: str  # "embedding", "moa" or "moe" (the last moe includes the final norm)
    rel_error: float


def quiet_polygraphy() -> None:
    """Polygraphy logs every comparison at INFO; our report says what matters."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR


def polygraphy_stats(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """max/mean abs/rel differences through Polygraphy's SimpleCompareFunc (its definitions of rel error)."""
    from polygraphy.comparator import SimpleCompareFunc
    from polygraphy.comparator.struct import IterationResult

    quiet_polygraphy()
    compare = SimpleCompareFunc(check_shapes=True, atol=np.inf, rtol=np.inf)
    result = compare(IterationResult({"x": ref}, runner_name="ref"), IterationResult({"x": test}, runner_name="test"))
    stats = result["x"]
    return {"max_abs": float(stats.max_absdiff), "mean_abs": float(stats.mean_absdiff),
            "max_rel": float(stats.max_reldiff), "mean_rel": float(stats.mean_reldiff)}


def logit_stats(ref: np.ndarray, test: np.ndarray) -> LogitStats:
    """ref, test: [N, V] logits of the real tokens."""
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    basic = polygraphy_stats(ref, test)
    cosine = np.sum(ref * test, -1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(test, axis=-1), 1e-30)
    top1 = np.mean(ref.argmax(-1) == test.argmax(-1))
    k = min(5, ref.shape[-1])
    top_ref, top_test = np.argsort(-ref, -1)[:, :k], np.argsort(-test, -1)[:, :k]
    top5 = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_test, strict=True)])
    log_p, log_q = _log_softmax(ref), _log_softmax(test)
    kl = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))
    return LogitStats(**basic, cosine=float(np.mean(cosine)), top1=float(top1), top5=float(top5),
                      kl=float(max(kl, 0.0)), scale=float(np.abs(ref).max()))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def routing_stats(ref_logits: np.ndarray, ref_selected: np.ndarray, test_selected: np.ndarray, top_k: int,
                  tie_margin: float, layer: int, router: str) -> RoutingStats:
    """ref_logits [N, E]: the reference's router logits of the real tokens; ref_selected, test_selected [N, K]:
    the experts each backend actually routed them to (its validation outputs, so its own top-k and tie rule).
    Decisions are expert sets per token (slot order does not change JetMoe's output: the gate-weighted sum over
    slots is symmetric). Tokens whose k-th and (k+1)-th reference logits are closer than `tie_margin` are
    near-ties: left out of the agreement, and counted as flips where the two backends chose differently."""
    ranked = -np.sort(-ref_logits, axis=-1)
    if top_k < ref_logits.shape[-1]:
        tie = ranked[:, top_k - 1] - ranked[:, top_k] < tie_margin
    else:
        tie = np.zeros(len(ref_logits), bool)
    ref_sets, test_sets = np.sort(ref_selected, -1), np.sort(test_selected, -1)
    # slots agreeing per token
    same = np.array([len(np.intersect1d(a, b)) for a, b in zip(ref_sets, test_sets, strict=True)], dtype=int)
    decisions = int((~tie).sum()) * top_k
    agree = float(same[~tie].sum() / decisions) if decisions else 1.0
    flips = int((same[tie] < top_k).sum())
    return RoutingStats(layer, router, decisions, agree, int(tie.sum()), flips)


def sub_block_errors(ref: dict[str, np.ndarray], test: dict[str, np.ndarray], names: IoNames,
                     real: np.ndarray) -> list[tuple[Divergence, float]]:
    """Relative error after each stage, in order: embeddings, then per layer the MoA and the MoE sub-block."""
    stages = [(None, "embedding", names.hidden_states[0])]
    for i in range(names.num_layers):
        stages += [(i, "moa", names.moa_hidden_states[i]), (i, "moe", names.hidden_states[i + 1])]
    errors = []
    for layer, block, name in stages:
        r, t = ref[name][real].astype(np.float64), test[name][real].astype(np.float64)
        rel = float(np.linalg.norm(r - t) / max(np.linalg.norm(r), 1e-30))
        errors.append((Divergence(layer, block, rel), rel))
    return errors


def first_divergence(errors: list[tuple[Divergence, float]], tolerances: Tolerances) -> Divergence | None:
    for divergence, rel in errors:
        if rel > tolerances.hidden_rtol:
            return divergence
    return None
