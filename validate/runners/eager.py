"""The reference: the eager PyTorch model, fed and answering with the exported graph's names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from jetmoe.model import JetMoeForCausalLM, JetMoeForSequenceClassification
from validate.runners.base import BaseRunner

_TASKS = {"causal-lm": JetMoeForCausalLM, "sequence-classification": JetMoeForSequenceClassification}


class EagerRunner(BaseRunner):
    """Always produces the validation outputs too (router logits, hidden states): they cost nothing here."""

    def __init__(self, checkpoint: str | os.PathLike, dtype: torch.dtype = torch.float32,
                 task: str = "causal-lm") -> None:
        super().__init__()
        self.checkpoint = Path(checkpoint)
        self.dtype = dtype
        self.task = task
        self.name = f"eager-{str(dtype).removeprefix('torch.')}"
        self.model = None

    def activate_impl(self) -> None:
        self.model = _TASKS[self.task].from_pretrained(self.checkpoint, dtype=self.dtype)

    def deactivate_impl(self) -> None:
        self.model = None

    @property
    def config(self) -> JetMoeConfig:
        return self.model.config

    @property
    def io_names(self) -> IoNames:
        return IoNames(self.config.num_hidden_layers, self.task, validation_outputs=True)

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.io_names
        args = {k: torch.from_numpy(np.asarray(feeds[k])) for k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            if self.task == "causal-lm":
                past = [(self._tensor(feeds[k]), self._tensor(feeds[v])) for k, v in names.past]
                out = self.model(**args, position_ids=torch.from_numpy(np.asarray(feeds["position_ids"])),
                                 past_key_values=past, use_cache=True, output_router_logits=True,
                                 output_hidden_states=True)
            else:
                out = self.model(**args, use_cache=False, output_router_logits=True, output_hidden_states=True)
        values = [out.logits]
        if self.task == "causal-lm":
            values += [t for pair in out.past_key_values for t in pair]
        values += [*out.router_logits, *out.hidden_states, *out.moa_hidden_states]
        return {name: _numpy(t) for name, t in zip(names.outputs, values)}

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(self.dtype)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
