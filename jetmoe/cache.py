"""KV cache as explicit tensors: per layer, keys and values [B, H_kv, P, Dh].

It is a plain list of (key, value) pairs that grows by concatenation, so the same forward serves eager
decoding and an exported graph whose past/present key-values are graph inputs/outputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

KVPairs = Sequence[tuple[Tensor, Tensor]]


class KVCache:
    def __init__(self, layers: KVPairs | None = None) -> None:
        self._layers: list[tuple[Tensor, Tensor]] = [(k, v) for k, v in (layers or ())]

    @classmethod
    def wrap(cls, past: KVCache | KVPairs | None) -> KVCache:
        return past if isinstance(past, KVCache) else cls(past)

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, layer: int) -> tuple[Tensor, Tensor]:
        return self._layers[layer]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self._layers)

    def get_seq_length(self) -> int:
        """P: the number of cached positions (0 when empty)."""
        return self._layers[0][0].shape[2] if self._layers else 0

    def update(self, layer: int, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's key/value [B, H_kv, S, Dh] to `layer`; return the whole [B, H_kv, P+S, Dh]."""
        if layer < len(self._layers):
            past_key, past_value = self._layers[layer]
            key = torch.cat((past_key, key), dim=2)
            value = torch.cat((past_value, value), dim=2)
            self._layers[layer] = (key, value)
        elif layer == len(self._layers):
            self._layers.append((key, value))
        else:
            raise IndexError(f"KV cache has {len(self._layers)} layers; cannot update layer {layer}")
        return key, value

    def to_tuple(self) -> tuple[tuple[Tensor, Tensor], ...]:
        return tuple(self._layers)
