"""Pass/fail limits per dtype of the backend under test; the reference is always eager fp32.

Why fp32 eager for every dtype: it is the model as trained (HF's math), and what a deployment must stay close
to. An eager bf16 run is not the TensorRT bf16 engine's rounding either, so comparing against it would not be
tighter, only different. The looser half-precision limits below are the honest cost of the cast.
"""

from __future__ import annotations

import dataclasses
import math

from jetmoe.errors import InputError


@dataclasses.dataclass(frozen=True)
class Tolerances:
    logits_atol: float  # max |logit diff| <= atol + rtol * max |reference logit|, over real tokens
    logits_rtol: float
    min_top1: float  # fraction of tokens whose argmax agrees
    max_kl: float  # mean KL(p_ref || p) per token, nats
    min_routing: float  # fraction of (token, slot) decisions that agree, near-ties left out
    tie_margin: float  # k-th minus (k+1)-th reference router logit below this: a near-tie
    kv_rtol: float  # max |present diff| <= kv_rtol * max |reference present|
    hidden_rtol: float  # ||diff|| / ||ref|| of a sub-block's output above this: the error starts there
    generation_must_match: bool  # greedy tokens identical for every step

    def replace(self, overrides: dict[str, str]) -> Tolerances:
        """These limits with `overrides` (name -> text) applied. Refuses (InputError) unknown names, and values
        that would switch a check off or make it meaningless: NaN, infinite or negative limits, fractions
        (min_top1, min_routing) outside [0, 1], and booleans other than true/false/yes/no/1/0."""
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        values = {}
        for key, text in overrides.items():
            if key not in fields:
                raise InputError(f"unknown tolerance {key!r}; known: {sorted(fields)}")
            values[key] = _parse_bool(key, text) if fields[key] == "bool" else _parse_limit(key, text)
        return dataclasses.replace(self, **values)


_FRACTIONS = ("min_top1", "min_routing")
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _parse_bool(key: str, text: str) -> bool:
    if text.strip().lower() not in _BOOLS:
        raise InputError(f"tolerance {key}={text!r} is not true or false")
    return _BOOLS[text.strip().lower()]


def _parse_limit(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"tolerance {key}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"tolerance {key}={text!r} must be a finite number >= 0 (NaN or infinity would switch "
                         f"the check off)")
    if key in _FRACTIONS and value > 1:
        raise InputError(f"tolerance {key}={text!r} is a fraction: it must be in [0, 1]")
    return value


DEFAULTS = {
    # fp32: summation order alone differs between backends, and the error grows with width and depth (8B widths,
    # 2 layers: logits 4.4e-4 off at max|logit| ~2, KV 5.5e-5 of max|present|): hence limits relative to scale
    "fp32": Tolerances(logits_atol=1e-4, logits_rtol=5e-4, min_top1=0.99, max_kl=1e-6, min_routing=1.0,
                       tie_margin=1e-4, kv_rtol=2e-4, hidden_rtol=1e-4, generation_must_match=True),
    "fp16": Tolerances(logits_atol=0.0, logits_rtol=0.02, min_top1=0.95, max_kl=5e-3, min_routing=0.98,
                       tie_margin=2e-2, kv_rtol=5e-3, hidden_rtol=1e-2, generation_must_match=False),
    "bf16": Tolerances(logits_atol=0.0, logits_rtol=0.05, min_top1=0.9, max_kl=2e-2, min_routing=0.95,
                       tie_margin=5e-2, kv_rtol=2e-2, hidden_rtol=3e-2, generation_must_match=False),
}
