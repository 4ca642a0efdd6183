"""The input checks every backend runs: the eager model's forward, and `Runner.infer` for ONNX Runtime and
TensorRT (whose graphs lose the model's Python checks when traced). One implementation, one set of messages.

Feeds use the exported graph's names (jetmoe/io_names.py). Letters: B batch, S new tokens, P cached tokens,
L = P + S, H_kv key/value heads, Dh head dim.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from jetmoe import dtypes
from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.io_names import IoNames


def check_token_ids(input_ids: Tensor, vocab_size: int) -> None:
    """input_ids [B, S] with every id in [0, vocab_size)."""
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise InputError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        bad = input_ids[(input_ids < 0) | (input_ids >= vocab_size)]
        raise InputError(f"token id {int(bad[0])} is outside the vocabulary [0, {vocab_size})")


def check_length(cached: int, new: int, limit: int, what: str = "max_position_embeddings") -> None:
    if cached + new > limit:
        raise InputError(f"sequence length {cached + new} (cached {cached} + new {new}) exceeds {what}={limit}")


def check_positions(position_ids: Tensor, batch: int, new: int, limit: int, broadcast: bool = False) -> None:
    """position_ids [B, S] (or [1, S] with `broadcast`, as HF's forward accepts) in [0, limit)."""
    if tuple(position_ids.shape) != (batch, new) and not (broadcast and tuple(position_ids.shape) == (1, new)):
        raise InputError(f"position_ids must be [batch={batch}, seq={new}], got {tuple(position_ids.shape)}")
    if position_ids.numel() and int(position_ids.min()) < 0:
        raise InputError(f"position id {int(position_ids.min())} is negative")
    if position_ids.numel() and int(position_ids.max()) >= limit:
        raise InputError(f"position id {int(position_ids.max())} exceeds max_position_embeddings={limit}")


def check_mask(attention_mask: Tensor, batch: int, total: int) -> None:
    """attention_mask [B, P + S] of 0/1: a decode step's mask covers the cached tokens and the new ones."""
    if tuple(attention_mask.shape) != (batch, total):
        raise InputError(f"attention_mask must be [batch={batch}, cached+new={total}], got "
                         f"{tuple(attention_mask.shape)}")
    if attention_mask.numel() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise InputError("attention_mask must hold only 0 and 1")


def check_feeds(feeds: Mapping[str, object], config: JetMoeConfig, names: IoNames, float_type: dtypes.DType,
                max_seq: int | None = None, max_batch: int | None = None) -> dict[str, Tensor]:
    """Check a feed dict against the graph's inputs; return it as torch tensors in the graph's dtypes.

    Refuses (InputError, naming the value): missing or unknown names, wrong ranks, inconsistent batch or
    lengths, a mask that does not cover cached + new tokens, token ids outside the vocabulary, positions or
    lengths past `max_seq` (default: max_position_embeddings), a batch above `max_batch`. Integer inputs
    become int64; cache tensors the runner's float type (a numpy float32 cache feeds a bf16 runner).
    """
    expected = names.inputs
    missing = [n for n in expected if n not in feeds]
    unknown = sorted(n for n in feeds if n not in expected)
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
        raise InputError(f"feeds do not match the graph's inputs: {'; '.join(parts)} (inputs: {expected})")
    tensors = {name: _tensor(name, feeds[name]) for name in expected}
    ids = tensors["input_ids"]
    check_token_ids(ids, config.vocab_size)
    B, S = ids.shape
    if S == 0:
        raise InputError("input_ids holds no tokens (seq = 0)")
    if max_batch is not None and B > max_batch:
        raise InputError(f"batch {B} exceeds max_batch={max_batch}")
    limit = max_seq or config.max_position_embeddings
    what = "max_position_embeddings" if max_seq is None else "max_seq"
    P = 0
    for key, value in names.past:
        for name in (key, value):
            past = tensors[name]
            want = (B, config.num_key_value_heads, past.shape[2] if past.dim() == 4 else "P", config.kv_channels)
            if past.dim() != 4 or tuple(past.shape) != want:
                raise InputError(f"{name} must be [batch={B}, num_key_value_heads={config.num_key_value_heads}, "
                                 f"past, kv_channels={config.kv_channels}], got {tuple(past.shape)}")
            if not past.is_floating_point():
                raise InputError(f"{name} must be a float tensor, got {past.dtype}")
        P = tensors[names.past[0][0]].shape[2]
        if tensors[key].shape[2] != P or tensors[value].shape[2] != P:
            raise InputError(f"every cache tensor must hold the same past length; {names.past[0][0]} has {P}, "
                             f"{key} {tensors[key].shape[2]}, {value} {tensors[value].shape[2]}")
    check_length(P, S, limit, what)
    check_mask(tensors["attention_mask"], B, P + S)
    if "position_ids" in tensors:
        check_positions(tensors["position_ids"], B, S, config.max_position_embeddings)
    for name, tensor in tensors.items():
        if name in ("input_ids", "attention_mask", "position_ids"):
            if tensor.is_floating_point():
                raise InputError(f"{name} must be an integer tensor, got {tensor.dtype}")
            tensors[name] = tensor.to(torch.int64)
        else:
            tensors[name] = tensor.to(float_type.torch)
    return tensors


def _tensor(name: str, value: object) -> Tensor:
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise InputError(f"{name} must be a numeric array, got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))
