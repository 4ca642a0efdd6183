"""Validation cases and how a runner goes through one: a prefill, then decode steps through its own KV cache.

The decode tokens are fixed in advance (teacher forcing), so every backend sees the same inputs at every step
even when its logits differ slightly; each backend carries its own cache from step to step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.runner import Runner


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


def default_cases(config: JetMoeConfig, decode_steps: int, long_context: int | None, seed: int = 0) -> list[Case]:
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


StepFeeds = tuple[str, dict[str, np.ndarray], np.ndarray]  # label, feeds without the cache, real positions [B, S]


def case_feeds(config: JetMoeConfig, case: Case, task: str = "causal-lm") -> list[StepFeeds]:
    """(label, feeds without the cache, real positions [B, S]) of each step of `case`: the prompts left-padded
    with the pad id (0 without one), positions as jetmoe.generate (and HF generate) give them, padding at 1; then
    one step per decode token. What `run_case` feeds every runner, and validate/reference.py the reference."""
    pad = config.pad_token_id or 0
    width = max(len(p) for p in case.prompts)
    ids = np.full((len(case.prompts), width), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(case.prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    if task != "causal-lm":
        return [("forward", {"input_ids": ids, "attention_mask": mask}, mask.astype(bool))]
    position = np.where(mask == 0, 1, mask.cumsum(-1) - 1)
    steps = [("prefill", {"input_ids": ids, "attention_mask": mask, "position_ids": position}, mask.astype(bool))]
    for i, step_tokens in enumerate(case.decode_tokens):
        mask = np.concatenate([mask, np.ones((len(step_tokens), 1), dtype=np.int64)], axis=1)
        position = position[:, -1:] + 1
        steps.append((f"decode {i + 1}", {"input_ids": np.array(step_tokens, dtype=np.int64)[:, None],
                                          "attention_mask": mask, "position_ids": position},
                      np.ones((len(step_tokens), 1), bool)))
    return steps


def run_case(runner: Runner, case: Case) -> list[Step]:
    """Prefill, then the case's decode steps, each fed the previous step's cache (teacher forcing)."""
    task = runner.io_names.task
    steps, outputs = [], None
    for label, feeds, real in case_feeds(runner.config, case, task):
        if task == "causal-lm":
            feeds = {**feeds, **(runner.empty_past(len(case.prompts)) if outputs is None
                                 else runner.carry_past(outputs))}
        outputs = runner.infer(feeds)
        steps.append(Step(label, as_numpy(feeds), as_numpy(outputs), real))
    return steps


def as_numpy(values: dict[str, object]) -> dict[str, np.ndarray]:
    """Feeds or outputs for comparison: host numpy, bf16 widened to float32 (numpy has no bf16)."""
    return {name: to_numpy(value) for name, value in values.items()}


def to_numpy(value: object) -> np.ndarray:
    """A tensor (bf16 widened to float32: numpy has no bf16) or array-like as a host numpy array."""
    if isinstance(value, torch.Tensor):
        return (value.float() if value.dtype == torch.bfloat16 else value).detach().cpu().numpy()
    return np.asarray(value)
