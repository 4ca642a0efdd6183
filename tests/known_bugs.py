"""Bugs that silently break JetMoe parity, as monkeypatches on jetmoe.model: the parity tests and the validator
tests must each catch them. Each function takes a pytest MonkeyPatch (or its context)."""

from __future__ import annotations

import torch

import jetmoe.model as model_module
from jetmoe import ops


def block_norms_with_config_eps(patch, eps: float = 1e-5) -> None:
    """Block norms built with config.rms_norm_eps (1e-5 in jetmoe-8b) instead of HF's hard-coded 1e-6."""
    patch.setattr(model_module, "BLOCK_NORM_EPS", eps)


def swiglu_halves_swapped(patch) -> None:
    """silu on the second half of the expert's input projection instead of the first."""
    def forward(self, x):
        B, S, D = x.shape
        I = self.intermediate_size
        flat = x.reshape(B * S, D)
        gates, idx, logits = self.router(flat)
        h = ops.expert_map(flat, idx, self.input_linear.weight)
        h = torch.nn.functional.silu(h[..., I:]) * h[..., :I]
        return ops.expert_reduce(h, idx, gates, self.output_linear.weight, self.bias).view(B, S, D), logits, idx
    patch.setattr(model_module.MixtureOfExperts, "forward", forward)


def kv_interleaved(patch) -> None:
    """Query head h reads kv head h // K (repeat_interleave) instead of h % H_kv (JetMoe tiles K/V)."""
    real = model_module.apply_rope

    def rope(x, cos, sin):
        out = real(x, cos, sin)
        if out.dim() == 5:  # queries [B, S, K, H_kv, Dh]
            B, S, K, H, Dh = out.shape
            out = out.reshape(B, S, K * H, Dh).view(B, S, H, K, Dh).transpose(2, 3).reshape(B, S, K, H, Dh)
        return out
    patch.setattr(model_module, "apply_rope", rope)
