"""Generation shared by every backend: greedy or sampled decoding over a `step` function with a KV cache.

A step takes `input_ids [B, S]`, `attention_mask [B, P+S]`, `position_ids [B, S]` and the cache from the
previous step (None at prefill) and returns the last position's logits [B, V] and the new cache. The eager
model, ONNX Runtime and TensorRT each provide one; the decoding loop below is the same for all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from jetmoe.errors import InputError


class Step(Protocol):
    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                 past: Any) -> tuple[Tensor, Any]: ...


class EagerStep:
    """A `Step` over the eager PyTorch model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                 past: Any) -> tuple[Tensor, Any]:
        device = self.model.device
        with torch.inference_mode():
            out = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             position_ids=position_ids.to(device), past_key_values=past, use_cache=True,
                             logits_to_keep=1)
        return out.logits[:, -1].cpu(), out.past_key_values


def generate(
    step: Step,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    streamer: Callable[[list[int | None]], None] | None = None,
) -> list[list[int]]:
    """Decode up to `max_new_tokens` per prompt; a row stops after emitting an eos token (kept in its output).

    Prompts of different lengths are left-padded. `streamer`, if given, receives each step's new token per
    row (None for rows already finished). Returns the new tokens of each row.
    """
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    _check_options(prompts, max_new_tokens, do_sample, temperature, top_k, top_p)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    B, S = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((B, S), pad, dtype=torch.long)
    attention_mask = torch.zeros((B, S), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, S - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, S - len(prompt):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # as HF generate
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    eos_ids = torch.tensor(eos, dtype=torch.long)

    outputs: list[list[int]] = [[] for _ in range(B)]
    finished = torch.zeros(B, dtype=torch.bool)
    past = None
    for i in range(max_new_tokens):
        logits, past = step(input_ids, attention_mask, position_ids, past)
        tokens = choose_tokens(logits, do_sample, temperature, top_k, top_p, generator)
        tokens = tokens.masked_fill(finished, pad)
        new = [None if done else int(t) for t, done in zip(tokens.tolist(), finished.tolist())]
        for row, token in enumerate(new):
            if token is not None:
                outputs[row].append(token)
        if streamer is not None:
            streamer(new)
        finished |= torch.isin(tokens, eos_ids)
        if bool(finished.all()):
            break
        input_ids = tokens[:, None]
        attention_mask = torch.cat((attention_mask, torch.ones((B, 1), dtype=torch.long)), dim=1)
        position_ids = position_ids[:, -1:] + 1
    return outputs


def choose_tokens(logits: Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float,
                  generator: torch.Generator | None) -> Tensor:
    """logits [B, V] -> token [B]: argmax, or a sample after temperature, top-k and top-p (nucleus) filtering."""
    logits = logits.float()
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token once the tokens ranked above it already hold top_p of the mass (the first always stays)
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def _check_options(prompts: Sequence[Sequence[int]], max_new_tokens: int, do_sample: bool, temperature: float,
                   top_k: int, top_p: float) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError(f"every prompt needs at least one token; got lengths {[len(p) for p in prompts]}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise InputError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise InputError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
