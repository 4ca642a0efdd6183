"""The fp32 reference at any size: layer-major, one layer's weights in memory at a time.

Every input of a validation case is known before anything runs (decode tokens are teacher-forced: validate/cases.py),
so the reference need not run step by step through the whole model. It runs layer by layer: load layer 0's weights
from the checkpoint (bf16 or fp16 on disk, upcast to fp32), push every step of every case through that block (each
case carrying its own KV cache for the layer), drop the weights, load layer 1, ... The embeddings, blocks, final
norm and head are jetmoe/model.py's modules and helpers, called with the same tensors and shapes as a step-major
forward, so the outputs are bitwise those of `EagerRunner` on the fp32 model with validation outputs
(tests/validate/test_reference.py), at a peak of one layer of fp32 weights, the fp32 embeddings and the cases'
activations: about 2.5 GB at jetmoe-8b's widths, whatever the depth, instead of 34 GB.

    steps = reference_steps("ckpt", cases)          # {case name: [Step(prefill), Step(decode 1), ...]}

Generation is checked teacher-forced (`teacher_forced_tokens`): the backend generates greedily, then the reference
takes the backend's own tokens as decode inputs and gives its argmax at every step. Up to the first divergence that
is exactly the reference's free-running greedy generation, and the reference never has to decode free-running,
which would need the whole model at every step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jetmoe import checkpoint
from jetmoe.cache import KVCache
from jetmoe.checkpoint import WeightFiles
from jetmoe.config import JetMoeConfig
from jetmoe.io_names import IoNames
from jetmoe.log import progress
from jetmoe.model import JetMoeBlock, JetMoeForCausalLM, RMSNorm, attention_bias, rope_cos_sin
from validate.cases import Case, Step, as_numpy, case_feeds, to_numpy

log = logging.getLogger(__name__)
_EMBED = "model.embed_tokens.weight"


@dataclasses.dataclass
class _Run:
    """One step of one case while the layers go by: its inputs, its hidden state, the outputs collected."""

    label: str
    feeds: dict[str, np.ndarray]
    real: np.ndarray
    hidden: torch.Tensor | None = None  # [B, S, D]
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    outputs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def reference_steps(checkpoint_dir: str | os.PathLike, cases: list[Case], dtype: torch.dtype = torch.float32
                    ) -> dict[str, list[Step]]:
    """`{case.name: run_case(EagerRunner(fp32 model, validation_outputs=True), case)}` for a causal-lm checkpoint,
    computed layer-major. `dtype` other than fp32 (fp16, bf16) computes the same way with the weights in that
    type, for telling what a dtype costs from what a graph costs (benchmarks/bench_fullsize.py: eager fp16 against
    this reference next to ONNX Runtime fp16); the validator's reference is always fp32."""
    checkpoint_dir = Path(checkpoint_dir)
    start = time.perf_counter()
    config = JetMoeConfig.from_pretrained(checkpoint_dir)
    weights = checkpoint.verify(checkpoint_dir, JetMoeForCausalLM, config)
    tied = checkpoint.lm_head_tied(weights, config)  # as loading decides it
    names = IoNames(config.num_hidden_layers, "causal-lm", validation_outputs=True)
    runs = {case.name: [_Run(label, feeds, real) for label, feeds, real in case_feeds(config, case)]
            for case in cases}

    with torch.inference_mode():
        embed = _load(weights, {_EMBED: _EMBED}, dtype)[_EMBED]
        for case_runs in runs.values():
            for run in case_runs:
                run.hidden = F.embedding(torch.from_numpy(run.feeds["input_ids"]), embed)  # [B, S, D]
        lm_head = embed if tied else None
        del embed
        for layer in progress(range(config.num_hidden_layers), "reference (layer by layer)",
                              total=config.num_hidden_layers, unit="layer", logger=log):
            block = _block(config, weights, layer, dtype)
            for case in cases:
                cache = KVCache()  # this case's cache of this layer, in slot 0
                for run in runs[case.name]:
                    _step_through(block, run, cache, config, layer, names)
            del block
        norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        norm.weight = torch.nn.Parameter(_load(weights, {"model.norm.weight": "w"}, dtype)["w"], requires_grad=False)
        if lm_head is None:
            lm_head = _load(weights, {checkpoint.TIED_KEY: "w"}, dtype)["w"]
        steps = {}
        for case in cases:
            steps[case.name] = []
            for run in runs[case.name]:
                hidden = norm(run.hidden)
                run.outputs[names.hidden_states[-1]] = hidden
                run.outputs["logits"] = F.linear(hidden, lm_head)  # [B, S, V]
                outputs = as_numpy({name: run.outputs[name] for name in names.outputs})
                steps[case.name].append(Step(run.label, run.feeds, outputs, run.real))
                run.outputs.clear()
    log.info("[reference %.1fs, peak RSS %.2f GiB] %d layers, %d cases", time.perf_counter() - start,
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, config.num_hidden_layers, len(cases))
    return steps


def _step_through(block: JetMoeBlock, run: _Run, cache: KVCache, config: JetMoeConfig, layer: int,
                  names: IoNames) -> None:
    """One step of one case through one block: JetMoeModel.forward's per-step preamble (once), then the block."""
    if run.bias is None:
        B, S = run.feeds["input_ids"].shape
        P = cache.get_seq_length()
        cache_position = torch.arange(P, P + S)
        run.bias = attention_bias(torch.from_numpy(run.feeds["attention_mask"]), cache_position, B, P + S,
                                  run.hidden.device)  # [B, 1, S, P+S]
        run.cos, run.sin = rope_cos_sin(torch.from_numpy(run.feeds["position_ids"]), config.kv_channels,
                                        config.rope_theta, run.hidden.dtype)  # [B, S, Dh]
    run.outputs[names.hidden_states[layer]] = run.hidden
    past = cache[0] if len(cache) else None
    run.hidden, moa_hidden, _, (moa_logits, moe_logits), (moa_idx, moe_idx) = block(
        run.hidden, run.cos, run.sin, run.bias, cache, False)
    if past is None:  # prefill: the empty cache EagerRunner is fed
        empty = to_numpy(torch.zeros(run.hidden.shape[0], config.num_key_value_heads, 0, config.kv_channels,
                                     dtype=run.hidden.dtype))
        past = (empty, empty)
    run.feeds[names.past[layer][0]], run.feeds[names.past[layer][1]] = (to_numpy(t) for t in past)
    run.outputs[names.present[layer][0]], run.outputs[names.present[layer][1]] = cache[0]
    run.outputs[names.moa_hidden_states[layer]] = moa_hidden
    run.outputs[names.router_logits[2 * layer]], run.outputs[names.router_logits[2 * layer + 1]] = (moa_logits,
                                                                                                    moe_logits)
    run.outputs[names.selected_experts[2 * layer]], run.outputs[names.selected_experts[2 * layer + 1]] = (moa_idx,
                                                                                                          moe_idx)


def _block(config: JetMoeConfig, weights: WeightFiles, layer: int, dtype: torch.dtype) -> JetMoeBlock:
    """Layer `layer`'s block in `dtype`, built as layer 0 (each case's cache holds this one layer, in slot 0)."""
    prefix = f"model.layers.{layer}."
    with torch.device("meta"):
        block = JetMoeBlock(config, 0)
    block.load_state_dict(_load(weights, {prefix + name: name for name in block.state_dict()}, dtype), strict=True,
                          assign=True)
    return block.eval()


def _load(weights: WeightFiles, wanted: dict[str, str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Checkpoint tensors `wanted` (checkpoint name -> key) in `dtype`, one stored tensor read at a time."""
    return {wanted[name]: tensor.to(dtype) for name, tensor in checkpoint.iter_tensors(weights, set(wanted))}


# ---- generation, teacher-forced ---------------------------------------------------------------------------------


def teacher_forced_tokens(checkpoint_dir: str | os.PathLike, prompts: list[tuple[int, ...]],
                          tokens: list[list[int]]) -> list[list[int]]:
    """The reference's greedy choice at every step of a backend's greedy generation, fed the backend's own tokens.

    Up to the first step where they differ this is the reference's own greedy generation (the same feeds as
    jetmoe.generate's); from there on it keeps checking each step, where a free-running reference would only
    have drifted away."""
    steps = len(tokens[0])
    assert steps and all(len(row) == steps for row in tokens), "rows generated different numbers of tokens (eos?)"
    case = Case("generation", tuple(tuple(p) for p in prompts),
                tuple(tuple(row[i] for row in tokens) for i in range(steps - 1)))
    reference = reference_steps(checkpoint_dir, [case])["generation"]
    choices = [step.outputs["logits"][:, -1].argmax(-1) for step in reference]  # [B] per step
    return [[int(choice[row]) for choice in choices] for row in range(len(tokens))]
