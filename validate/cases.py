"""Validation cases and how a runner goes through one: a prefill, then decode steps through its own KV cache.

The decode tokens are fixed in advance (teacher forcing), so every backend sees the same inputs at every step
even when its logits differ slightly; each backend carries its own cache from step to step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from validate.runners.base import BaseRunner


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    prompts: tuple[tuple[int, ...], ...]  # left-padded into one batch
    decode_tokens: tuple[tuple[int, ...], ...] = ()  # per step, one token per row


@dataclasses.dataclass
class Step:
    label: str  # "prefill" or "decode 1", ...
    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    real: np.ndarray  # [B, S] bool: positions holding real (not padding) tokens


def default_cases(config: JetMoeConfig, decode_steps: int = 4, long_context: int | None = None,
                  seed: int = 0) -> list[Case]:
    """Several prompts with left padding; prefill then decode; a long context near the configured limit."""
    limit = config.max_position_embeddings
    long_context = limit - decode_steps if long_context is None else long_context
    if not 0 <= long_context <= limit - decode_steps:
        raise InputError(f"long context {long_context} + {decode_steps} decode steps exceeds "
                         f"max_position_embeddings={limit}")
    rng = np.random.default_rng(seed)
    low = 3 if config.vocab_size > 3 else 0  # keep clear of bos/eos/pad ids

    def tokens(n: int) -> tuple[int, ...]:
        return tuple(int(t) for t in rng.integers(low, config.vocab_size, n))

    cases = [
        Case("prompts", (tokens(min(7, limit)), tokens(min(3, limit)), tokens(min(12, limit)))),
        Case("decode", (tokens(min(6, limit - decode_steps)), tokens(2)),
             tuple(tokens(2) for _ in range(decode_steps))),
    ]
    if long_context:
        cases.append(Case(f"long-context {long_context}", (tokens(long_context),),
                          tuple(tokens(1) for _ in range(decode_steps))))
    return cases


def run_case(runner: BaseRunner, case: Case) -> list[Step]:
    config, names = runner.config, runner.io_names
    pad = config.pad_token_id or 0
    width = max(len(p) for p in case.prompts)
    ids = np.full((len(case.prompts), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(case.prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if names.task != "causal-lm":
        return [Step("forward", feeds, runner.infer(feeds), mask.astype(bool))]

    position = np.maximum(mask.cumsum(-1) - 1, 0)
    empty = np.zeros((len(case.prompts), config.num_key_value_heads, 0, config.kv_channels), dtype=np.float32)
    feeds.update(position_ids=position, **{name: empty for pair in names.past for name in pair})
    steps = [Step("prefill", feeds, runner.infer(feeds), mask.astype(bool))]
    for i, step_tokens in enumerate(case.decode_tokens):
        mask = np.concatenate([mask, np.ones((len(step_tokens), 1), dtype=np.int64)], axis=1)
        position = position[:, -1:] + 1
        previous = steps[-1].outputs
        feeds = {"input_ids": np.array(step_tokens, dtype=np.int64)[:, None], "attention_mask": mask,
                 "position_ids": position}
        for (past_k, past_v), (present_k, present_v) in zip(names.past, names.present):
            feeds[past_k], feeds[past_v] = previous[present_k], previous[present_v]
        steps.append(Step(f"decode {i + 1}", feeds, runner.infer(feeds), np.ones((len(step_tokens), 1), bool)))
    return steps


class RunnerStep:
    """A runner as a generation step (`jetmoe.generate.Step`): numpy caches carried between calls."""

    def __init__(self, runner: BaseRunner) -> None:
        self.runner = runner

    def __call__(self, input_ids, attention_mask, position_ids, past):
        import torch

        config, names = self.runner.config, self.runner.io_names
        B = input_ids.shape[0]
        if past is None:
            empty = np.zeros((B, config.num_key_value_heads, 0, config.kv_channels), dtype=np.float32)
            past = [empty] * (2 * config.num_hidden_layers)
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                 "position_ids": position_ids.numpy()}
        feeds.update(zip([n for pair in names.past for n in pair], past))
        out = self.runner.infer(feeds)
        present = [out[n] for pair in names.present for n in pair]
        return torch.from_numpy(np.asarray(out["logits"][:, -1], dtype=np.float32)), present
