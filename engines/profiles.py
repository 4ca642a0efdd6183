"""TensorRT optimization profiles for an exported JetMoe graph: one for prefill, one for decode.

Pure Python (no TensorRT): for every graph input (jetmoe/io_names.py) a (min, opt, max) shape, from the model
config and the requested limits. The builder hands these to `IOptimizationProfile.set_shape`; the runtime
picks the profile that covers a request's shapes; the manifest records them.

Dimensions: B batch, S new tokens, P cached tokens (past_seq), P + S = total_seq (attention_mask).
    prefill: B in [1, max_batch], S in [1, max_seq], P = 0
    decode:  B in [1, max_batch], S = 1,             P in [0, max_seq - 1]
A request with P > 0 and S > 1 (chunked prefill) fits neither and is refused with the shapes in the message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.io_names import IoNames

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Limits:
    """What an engine is built for. Defaults are resolved by `resolve_limits` from the model config."""

    max_batch: int
    max_seq: int  # most tokens in the cache after a step (prefill length or past + 1)
    opt_batch: int
    opt_seq: int  # prefill length to tune for
    opt_past: int  # cached tokens to tune decode for

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str  # "prefill" or "decode"
    shapes: dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)

    def covers(self, feeds_shapes: dict[str, Shape]) -> bool:
        for name, (lo, _, hi) in self.shapes.items():
            shape = tuple(feeds_shapes[name])
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shapes": {k: [list(s) for s in v] for k, v in self.shapes.items()}}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Profile:
        return cls(raw["name"], {k: tuple(tuple(s) for s in v) for k, v in raw["shapes"].items()})


def resolve_limits(config: JetMoeConfig, *, max_batch: int, max_seq: int | None, opt_batch: int | None = None,
                   opt_seq: int | None = None, opt_past: int | None = None) -> Limits:
    """Check the requested limits against the model; None fills in: max_seq = max_position_embeddings, opt_batch =
    max_batch, opt_seq and opt_past = half of max_seq (the defaults engines/builder.plan_build documents)."""
    ctx = config.max_position_embeddings
    max_seq = ctx if max_seq is None else max_seq
    _positive("max_batch", max_batch)
    _positive("max_seq", max_seq)
    if max_seq > ctx:
        raise InputError(f"max_seq {max_seq} exceeds the model's max_position_embeddings {ctx}")
    opt_batch = max_batch if opt_batch is None else opt_batch
    opt_seq = max(max_seq // 2, 1) if opt_seq is None else opt_seq
    opt_past = (max_seq - 1) // 2 if opt_past is None else opt_past
    _within("opt_batch", opt_batch, 1, max_batch, "max_batch")
    _within("opt_seq", opt_seq, 1, max_seq, "max_seq")
    _within("opt_past", opt_past, 0, max_seq - 1, "max_seq - 1")
    return Limits(max_batch, max_seq, opt_batch, opt_seq, opt_past)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def _within(name: str, value: int, lo: int, hi: int, hi_name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InputError(f"{name} must be an integer in [{lo}, {hi}] ({hi_name}), got {value!r}")


def make_profiles(config: JetMoeConfig, names: IoNames, limits: Limits) -> list[Profile]:
    """The prefill and decode profiles (sequence classification: one "forward" profile, no cache)."""
    B = (1, limits.opt_batch, limits.max_batch)
    if names.task != "causal-lm":
        S = (1, limits.opt_seq, limits.max_seq)
        return [Profile("forward", _shapes(config, names, B, S, None))]
    prefill = _shapes(config, names, B, (1, limits.opt_seq, limits.max_seq), (0, 0, 0))
    decode = _shapes(config, names, B, (1, 1, 1), (0, limits.opt_past, limits.max_seq - 1))
    return [Profile("prefill", prefill), Profile("decode", decode)]


def _shapes(config: JetMoeConfig, names: IoNames, B: Shape, S: Shape, P: Shape | None
            ) -> dict[str, tuple[Shape, Shape, Shape]]:
    def per_bound(*dims):  # dims: ints or (min, opt, max) triples -> (min_shape, opt_shape, max_shape)
        return tuple(tuple(d if isinstance(d, int) else d[i] for d in dims) for i in range(3))

    shapes = {"input_ids": per_bound(B, S)}
    if P is None:
        shapes["attention_mask"] = per_bound(B, S)
        return shapes
    total = tuple(p + s for p, s in zip(P, S, strict=True))
    shapes["attention_mask"] = per_bound(B, total)
    shapes["position_ids"] = per_bound(B, S)
    for pair in names.past:
        for name in pair:
            shapes[name] = per_bound(B, config.num_key_value_heads, P, config.kv_channels)
    assert list(shapes) == names.inputs, (list(shapes), names.inputs)
    return shapes


def select_profile(profiles: list[Profile], feeds_shapes: dict[str, Shape]) -> int:
    """Index of the first profile covering the shapes; InputError naming the shapes and the ranges if none."""
    missing = [name for name in profiles[0].shapes if name not in feeds_shapes]
    if missing:
        raise InputError(f"missing engine inputs {missing}; got {sorted(feeds_shapes)}")
    for i, profile in enumerate(profiles):
        if profile.covers(feeds_shapes):
            return i
    got = {k: tuple(feeds_shapes[k]) for k in ("input_ids", "attention_mask") if k in feeds_shapes}
    past = next((k for k in feeds_shapes if k.startswith("past_key_values.")), None)
    if past is not None:
        got[past] = tuple(feeds_shapes[past])
    ranges = "; ".join(f"{p.name}: input_ids {p.shapes['input_ids'][0]}..{p.shapes['input_ids'][2]}"
                       + (f", past {p.shapes[past][0][2]}..{p.shapes[past][2][2]}" if past else "")
                       for p in profiles)
    raise InputError(f"no optimization profile of the engine covers the input shapes {got} ({ranges}); "
                     f"rebuild with larger --max-batch/--max-seq, or split the request")
