"""Random JetMoe checkpoints: the embedded default that the demo and the tests start from."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from jetmoe.checkpoint import resolve_dtype
from jetmoe.config import CONFIG_NAME, JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.fileio import atomic_directory, check_output
from jetmoe.model import TASKS, JetMoePreTrainedModel


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
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                values = 1.0 + 0.1 * values
            elif name.endswith(".bias"):
                values = 0.02 * values
            elif name.endswith(("self_attention.experts.input_linear.weight", "kv_proj.weight")):
                values = 25 * std * values
            elif name.endswith(("router.layer.weight", "mlp.input_linear.weight", "mlp.output_linear.weight")):
                values = 10 * std * values
            else:
                values = std * values
            param.copy_(values)


def write_random_checkpoint(out_dir: str | os.PathLike, config: JetMoeConfig, *, seed: int = 0,
                            dtype: str | None = None, task: str = "causal-lm", overwrite: bool = False) -> Path:
    """Write a random HF-format checkpoint folder, all or nothing; dtype None: the config's, else fp32.

    A sequence-classification checkpoint gets pad_token_id 0 when the config has none (each row is pooled at
    its last non-pad token, so a batch needs one)."""
    if task not in TASKS:
        raise InputError(f"task {task!r} is not one of {sorted(TASKS)}")
    out_dir = check_output(out_dir, kind="dir", overwrite=overwrite, marker=CONFIG_NAME)
    torch_dtype = resolve_dtype(dtype, config)
    if task == "sequence-classification" and config.pad_token_id is None:
        config = config.replace(pad_token_id=0)
    model = TASKS[task](config)
    init_random_(model, seed)
    with atomic_directory(out_dir) as tmp:
        model.to(torch_dtype).save_pretrained(tmp)
    return out_dir
