"""Bugs that silently break JetMoe parity, as monkeypatches on jetmoe.model: the parity tests and the validator
tests must each catch them; and one that breaks the export's weight storage (on export.exporter), which
export/weights_check.py must catch. Each function takes a pytest MonkeyPatch (or its context)."""

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


def weights_folded_by_the_optimizer(patch) -> None:
    """The exporter's graph optimizer run after the weights are set (as before issue 12): onnxscript folds
    Transpose(kv_proj.weight) into an inline copy, and the original bytes stay dead in model.onnx.data."""
    import onnxscript.optimizer

    import export.exporter as exporter_module

    finish = exporter_module._finish_graph

    def finish_after_optimizing(model, *args):
        onnxscript.optimizer.optimize(model)
        return finish(model, *args)
    patch.setattr(exporter_module, "_optimize", lambda model: None)
    patch.setattr(exporter_module, "_finish_graph", finish_after_optimizing)
