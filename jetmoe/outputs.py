"""Forward outputs, with HF transformers' field names and tuple order (`return_dict=False` drops the Nones)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from jetmoe.cache import KVCache

_NOT_HF = ("moa_hidden_states", "selected_experts")  # our extras: never in the HF-ordered tuple


@dataclasses.dataclass
class _Output:
    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_HF)
                     if v is not None)


@dataclasses.dataclass
class JetMoeModelOutput(_Output):
    last_hidden_state: Tensor
    past_key_values: KVCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings, then each block's output; last one normed
    attentions: tuple[Tensor, ...] | None = None  # per layer [B, H, S, P+S], head h = slot * H_kv + kv head
    router_logits: tuple[Tensor, ...] | None = None  # per layer MoA then MoE, each [B*S, E] float32
    # Not in HF's output (and last, so HF's tuple order holds): per layer, the state after the MoA residual,
    # before the MoE. With hidden_states it locates an error to a sub-block. Filled with output_hidden_states.
    moa_hidden_states: tuple[Tensor, ...] | None = None
    # Not in HF's output: per layer MoA then MoE, the experts each token was routed to [B*S, K] int64 (the tie
    # rule of TopKRouter). Filled with output_router_logits; the validator compares backends' real selections.
    selected_experts: tuple[Tensor, ...] | None = None


@dataclasses.dataclass
class CausalLMOutput(_Output):
    loss: Tensor | None = None
    aux_loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    router_logits: tuple[Tensor, ...] | None = None
    moa_hidden_states: tuple[Tensor, ...] | None = None  # not in HF's output; see JetMoeModelOutput
    selected_experts: tuple[Tensor, ...] | None = None  # not in HF's output; see JetMoeModelOutput


@dataclasses.dataclass
class SequenceClassifierOutput(_Output):
    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: KVCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    router_logits: tuple[Tensor, ...] | None = None  # not in HF's output; last, so HF's tuple order holds
    moa_hidden_states: tuple[Tensor, ...] | None = None
    selected_experts: tuple[Tensor, ...] | None = None
