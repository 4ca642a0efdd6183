"""Random JetMoe checkpoints: the embedded default that the demo and the tests start from."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from jetmoe.checkpoint import atomic_directory, resolve_dtype
from jetmoe.config import JetMoeConfig
from jetmoe.errors import CheckpointError
from jetmoe.model import JetMoeForCausalLM, JetMoePreTrainedModel


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


def write_random_checkpoint(out_dir: str | os.PathLike, config: JetMoeConfig, seed: int = 0,
                            dtype: torch.dtype | str = "float32", overwrite: bool = False) -> Path:
    """Write a random HF-format JetMoeForCausalLM checkpoint folder, all or nothing."""
    out_dir = Path(out_dir)
    torch_dtype = resolve_dtype(dtype, config)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"output {out_dir} already exists; pass --overwrite to replace it")
    model = JetMoeForCausalLM(config)
    init_random_(model, seed)
    with atomic_directory(out_dir) as tmp:
        model.to(torch_dtype).save_pretrained(tmp)
    return out_dir
