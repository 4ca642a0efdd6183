"""Hugging Face Optimum's `ORTModelForCausalLM` on an export folder (docs/ecosystem.md). Optimum 2.1 pins
transformers < 5: it runs in an environment of its own (`pip install 'optimum[onnxruntime]' 'transformers<5'`).

    from export.hf_optimum import load_optimum_model
    model = load_optimum_model("exp")            # the folder `jetmoe export` wrote (config.json beside model.onnx)
    model.generate(input_ids, attention_mask=mask, max_new_tokens=16)

Two things stand between Optimum and our export, and only the second needs code:
1. Optimum reads the model's config from `config.json` beside model.onnx: `jetmoe export` writes it
   (export/sidecars.py).
2. Optimum builds the empty first-step cache from `num_attention_heads` and `hidden_size // num_attention_heads`
   for model types it does not list (`jetmoe` among them): [B, 8, 0, 8] on the tiny preset instead of the
   graph's [B, H_kv, 0, kv_channels] = [B, 4, 0, 16]. No config key fixes that without contradicting the
   derived `num_attention_heads = num_key_value_heads * num_experts_per_tok`, so a subclass sets the two
   attributes from the config after Optimum's constructor. Everything else (padded batches, position_ids,
   IO binding, `generate`) is Optimum's own.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from jetmoe.errors import ExportError, Unavailable


def load_optimum_model(export_dir: str | os.PathLike, **kwargs: Any):
    """`ORTModelForCausalLM.from_pretrained(export_dir, **kwargs)` with the KV cache sized for JetMoe."""
    return optimum_model_class().from_pretrained(export_dir, **kwargs)


@functools.cache
def optimum_model_class() -> type:
    try:
        from optimum.onnxruntime import ORTModelForCausalLM
    except ImportError as e:
        raise Unavailable(f"Optimum is not importable here ({e}); it needs `pip install 'optimum[onnxruntime]' "
                          "'transformers<5'`, in an environment of its own") from None

    class JetMoeORTModelForCausalLM(ORTModelForCausalLM):
        """Optimum's ONNX Runtime causal LM, with the past KV shape of our graph: [B, H_kv, P, kv_channels]."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.config.model_type != "jetmoe":
                raise ExportError(f"config.json is for model_type {self.config.model_type!r}, not 'jetmoe'")
            self.num_key_value_heads = self.config.num_key_value_heads
            self.embed_size_per_head = self.config.kv_channels

    return JetMoeORTModelForCausalLM
