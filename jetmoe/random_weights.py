"""Random JetMoe checkpoints: the embedded default that the demo and the tests start from.

The values, whatever the size, dtype or sharding: one `torch.Generator` seeded with `seed` draws N(0, 1) values for
every parameter in the model's parameter order (`named_parameters()`, a tied weight once), then each tensor is
scaled as `init_random_` says. A tensor's values depend only on the seed, the config and its place in that order:
`init_random_` (a model in memory) and `write_random_checkpoint` (streamed to disk, never a model in memory) give
the same weights, bit for bit, in any dtype, shard size or chunk size.

Streaming draws each tensor in pieces of `CHUNK` values. torch's CPU `normal_` turns uniforms into normals in
blocks of 16 (and redraws the last 16 of a tensor whose size is no multiple of 16), so pieces that are multiples
of 16, the last one at least 16 long, draw exactly the stream one `randn` of the whole tensor draws
(tests/jetmoe/test_random_weights.py checks it against `init_random_`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from jetmoe import checkpoint, dtypes
from jetmoe.checkpoint import SafetensorsWriter, resolve_dtype
from jetmoe.config import CONFIG_NAME, JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.fileio import atomic_directory, atomic_write_text, check_output
from jetmoe.log import progress
from jetmoe.model import TASKS, JetMoePreTrainedModel

log = logging.getLogger(__name__)
CHUNK = 1 << 24  # values drawn at a time when streaming: 64 MiB of fp32
# config.json "architectures": the real jetmoe-8b download's spelling for the causal LM
ARCHITECTURES = {"causal-lm": "JetMoEForCausalLM", "sequence-classification": "JetMoeForSequenceClassification"}


def init_random_(model: JetMoePreTrainedModel, seed: int) -> None:
    """Random weights that exercise every part of the model, unlike HF's init.

    HF's init (std 0.01, unit norms, zero biases) makes attention uniform and hides bugs: a wrong RoPE theta
    or block-norm eps moves logits by < 1e-6. Here matrices are N(0, initializer_range) as in HF, then norm
    weights are 1 + N(0, 0.1), MoA/MoE biases N(0, 0.02), MoA query projections and kv_proj are scaled x25
    (attention scores O(1)), routers x10 (clear top-k margins) and MoE experts x10 (an MoE output
    that matters: with HF's init a swapped SwiGLU half moves logits by ~1e-4).
    """
    std = model.config.initializer_range
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(_informative(name, torch.randn(param.shape, generator=gen, dtype=torch.float32), std))


def _informative(name: str, values: torch.Tensor, std: float) -> torch.Tensor:
    """N(0, 1) draws -> the values `init_random_` documents for parameter `name`, in place (elementwise)."""
    if name.endswith("norm.weight"):
        return values.mul_(0.1).add_(1.0)
    if name.endswith(".bias"):
        return values.mul_(0.02)
    if name.endswith(("self_attention.experts.input_linear.weight", "kv_proj.weight")):
        return values.mul_(25 * std)
    if name.endswith(("router.layer.weight", "mlp.input_linear.weight", "mlp.output_linear.weight")):
        return values.mul_(10 * std)
    return values.mul_(std)


def parameter_shapes(config: JetMoeConfig, task: str = "causal-lm") -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter in draw order; a tied weight once, under its first name (embed_tokens)."""
    with torch.device("meta"):
        return [(name, tuple(p.shape)) for name, p in TASKS[task](config).named_parameters()]


def random_pieces(gen: torch.Generator, name: str, shape: tuple[int, ...], std: float, dtype: torch.dtype,
                  chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """Parameter `name`'s values, flat, in pieces of about `chunk` values drawn from `gen`, cast to `dtype`: the
    values `init_random_` gives it when `gen` is where init_random_'s generator is at this parameter."""
    assert chunk > 0 and chunk % 16 == 0, chunk
    numel, start = math.prod(shape), 0
    while start < numel:
        end = min(numel, start + chunk)
        if numel - end < 16:  # a short last piece would draw another stream than one randn of the whole tensor
            end = numel
        yield _informative(name, torch.randn(end - start, generator=gen, dtype=torch.float32), std).to(dtype)
        start = end


def write_random_checkpoint(out_dir: str | os.PathLike, config: JetMoeConfig, *, seed: int = 0,
                            dtype: str | None = None, task: str = "causal-lm", overwrite: bool = False,
                            max_shard_size: int = checkpoint.DEFAULT_SHARD_BYTES) -> Path:
    """Write a random HF-format checkpoint folder, all or nothing, tensor by tensor; dtype None: the config's
    (jetmoe-8b: bf16), else fp32.

    Laid out as the real download: `model.safetensors`, or above max_shard_size bytes
    `model-0000i-of-0000N.safetensors` shards and `model.safetensors.index.json`; config.json in both key dialects
    (`JetMoeConfig.to_original_dict`). No model is built: memory stays at a few pieces of CHUNK values whatever
    the size. A sequence-classification checkpoint gets pad_token_id 0 when the config has none (each row is
    pooled at its last non-pad token, so a batch needs one)."""
    if task not in TASKS:
        raise InputError(f"task {task!r} is not one of {sorted(TASKS)}")
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) or max_shard_size < 1:
        raise InputError(f"max_shard_size must be a positive number of bytes, got {max_shard_size!r}")
    out_dir = check_output(out_dir, kind="dir", overwrite=overwrite, marker=CONFIG_NAME,
                           owned=checkpoint.other_than_checkpoint)
    torch_dtype = resolve_dtype(dtype, config)
    if task == "sequence-classification" and config.pad_token_id is None:
        config = config.replace(pad_token_id=0)
    shapes = dict(parameter_shapes(config, task))
    sizes = [(name, math.prod(shape) * torch_dtype.itemsize) for name, shape in shapes.items()]
    plan = checkpoint.plan_shards(sizes, max_shard_size)
    files = checkpoint.shard_file_names(len(plan))
    total = sum(nbytes for _, nbytes in sizes)
    gen = torch.Generator().manual_seed(seed)
    std = config.initializer_range
    start = time.perf_counter()
    with atomic_directory(out_dir) as tmp:
        for i, (names, file_name) in enumerate(zip(plan, files, strict=True)):
            log.info("[checkpoint %6.1fs, peak RSS %5.2f GiB] shard %d/%d: %s (%d tensors, %s)",
                     time.perf_counter() - start, _peak_rss_gib(), i + 1, len(files), file_name, len(names),
                     _size(sum(math.prod(shapes[n]) for n in names) * torch_dtype.itemsize))
            with SafetensorsWriter(tmp / file_name, [(n, torch_dtype, shapes[n]) for n in names]) as out:
                for name in progress(names, f"shard {i + 1}/{len(files)}", unit="tensor", logger=log):
                    for piece in random_pieces(gen, name, shapes[name], std, torch_dtype):
                        out.write(piece)
        if len(files) > 1:
            checkpoint.write_shard_index(tmp, {n: f for names, f in zip(plan, files, strict=True) for n in names},
                                         total)
        raw = {"architectures": [ARCHITECTURES[task]],
               **config.replace(dtype=dtypes.dtype(torch_dtype).hf_name).to_original_dict()}
        atomic_write_text(tmp / CONFIG_NAME, json.dumps(raw, indent=2, sort_keys=True) + "\n")
    log.info("[checkpoint %6.1fs, peak RSS %5.2f GiB] wrote %s (%s of %s weights, %d file(s))",
             time.perf_counter() - start, _peak_rss_gib(), out_dir, _size(total), dtypes.dtype(torch_dtype), len(files))
    return out_dir


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 10**8 else f"{nbytes / 1e6:.2f} MB"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
