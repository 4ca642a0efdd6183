"""Generation for every backend: greedy or sampled decoding written once, on the runner contract (jetmoe/runner.py).

Each step feeds the runner `input_ids [B, S]`, `attention_mask [B, P+S]`, `position_ids [B, S]` and the cache
(the previous step's present.* as past_key_values.*, value semantics) and reads the last position's logits.
The eager model, ONNX Runtime and TensorRT generate through the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.inputs import check_length
from jetmoe.runner import EagerRunner, Runner

FROM_CONFIG = "from-config"  # eos_token_id / pad_token_id default: the model config's


def generate(
    runner: Runner,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None | str = FROM_CONFIG,
    pad_token_id: int | None | str = FROM_CONFIG,
    streamer: Callable[[list[int | None]], None] | None = None,
) -> list[list[int]]:
    """Decode up to `max_new_tokens` per prompt with an active causal-lm `runner`; return each row's new tokens.

    A row stops after emitting an eos token (kept in its output). Prompts of different lengths are left-padded.
    `streamer`, if given, receives each step's new token per row (None for rows already finished). Every option
    and prompt is checked before the first step (InputError naming the value, e.g. a prompt plus
    max_new_tokens longer than the model or engine allows).
    """
    config = runner.config
    if runner.io_names.task != "causal-lm":
        raise InputError(f"{runner.name} runs a {runner.io_names.task} model; generation needs a causal-lm one")
    eos = config.eos_token_ids if eos_token_id == FROM_CONFIG else [] if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    pad = config.pad_token_id if pad_token_id == FROM_CONFIG else pad_token_id
    check_generation(config, prompts, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                     top_k=top_k, top_p=top_p, max_seq=runner.max_seq, max_batch=runner.max_batch)
    pad = pad if pad is not None else (eos[0] if eos else 0)
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
    past = runner.empty_past(B)
    for _ in range(max_new_tokens):
        out = runner.infer({"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                            **past})
        tokens = choose_tokens(out["logits"][:, -1].float().cpu(), do_sample, temperature, top_k, top_p, generator)
        tokens = tokens.masked_fill(finished, pad)
        new = [None if done else int(t) for t, done in zip(tokens.tolist(), finished.tolist(), strict=True)]
        for row, token in enumerate(new):
            if token is not None:
                outputs[row].append(token)
        if streamer is not None:
            streamer(new)
        finished |= torch.isin(tokens, eos_ids)
        if bool(finished.all()):
            break
        past = runner.carry_past(out)
        input_ids = tokens[:, None]
        attention_mask = torch.cat((attention_mask, torch.ones((B, 1), dtype=torch.long)), dim=1)
        position_ids = position_ids[:, -1:] + 1
    return outputs


class GenerationMixin:
    """`model.generate(...)` for the eager causal-lm model (HF's method name and habits): this loop, eagerly."""

    def generate(self, prompts: Sequence[Sequence[int]] | Tensor | None = None, *, input_ids: Tensor | None = None,
                 attention_mask: Tensor | None = None, **options) -> list[list[int]]:
        """Generate from token-id prompts; options as `jetmoe.generate.generate`.

        HF's call forms work too: a [B, S] tensor of ids (positionally or as `input_ids=`), with an optional
        `attention_mask` whose zeros mark padding to drop. HF options this loop does not have are refused with
        what to pass instead.
        """
        prompts = _prompts_from(prompts, input_ids, attention_mask)
        for name, hint in _HF_OPTIONS.items():
            if name in options:
                raise InputError(f"generate() has no {name}={options[name]!r}: {hint}")
        with EagerRunner(self) as runner:
            return generate(runner, prompts, **options)


_HF_OPTIONS = {
    "max_length": "pass max_new_tokens (the number of new tokens) instead",
    "num_beams": "beam search is not implemented; use greedy (default) or do_sample=True",
    "generation_config": "pass the options (max_new_tokens, do_sample, temperature, top_k, top_p) as keywords",
    "return_dict_in_generate": "generate returns the new tokens of each row as lists of ids",
}


def _prompts_from(prompts, input_ids, attention_mask) -> list[list[int]]:
    if prompts is not None and input_ids is not None:
        raise InputError("pass the prompts once: positionally or as input_ids=")
    prompts = input_ids if prompts is None else prompts
    if prompts is None:
        raise InputError("generate() needs prompts: a list of token-id lists, or a [batch, seq] tensor")
    if isinstance(prompts, Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        if prompts.dim() != 2 or prompts.is_floating_point():
            raise InputError(f"input_ids must be an integer [batch, seq] tensor, got {prompts.dtype} "
                             f"{tuple(prompts.shape)}")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(prompts.shape):
            raise InputError(f"attention_mask must have input_ids' shape {tuple(prompts.shape)}, got "
                             f"{tuple(attention_mask.shape)}")
        rows = prompts.tolist()
        if attention_mask is None:
            return rows
        return [[t for t, m in zip(row, mask, strict=True) if m] for row, mask in zip(rows, attention_mask.tolist(),
                                                                                      strict=True)]
    if attention_mask is not None:
        raise InputError("attention_mask goes with a tensor of input_ids; lists of prompts need no mask")
    return [list(p) for p in prompts]


def check_generation(config: JetMoeConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                     do_sample: bool, temperature: float, top_k: int, top_p: float, max_seq: int | None = None,
                     max_batch: int | None = None) -> None:
    """Every check generation can make before any model runs (the CLI calls it before loading weights)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError(f"every prompt needs at least one token; got lengths {[len(p) for p in prompts]}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if do_sample and not temperature > 0:
        raise InputError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise InputError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
    for prompt in prompts:
        for token in prompt:
            if not 0 <= token < config.vocab_size:
                raise InputError(f"token id {token} is outside the vocabulary [0, {config.vocab_size})")
    if max_batch is not None and len(prompts) > max_batch:
        raise InputError(f"{len(prompts)} prompts exceed the batch limit {max_batch}")
    longest = max(len(p) for p in prompts)
    limit = max_seq or config.max_position_embeddings
    what = "max_position_embeddings" if max_seq is None else "max_seq"
    if longest + max_new_tokens > limit:
        raise InputError(f"the longest prompt ({longest} tokens) + max_new_tokens={max_new_tokens} = "
                         f"{longest + max_new_tokens} exceeds {what}={limit}; lower max_new_tokens")
    check_length(0, longest, limit, what)


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
