"""An exported model in ONNX Runtime: named inputs in, named outputs out, and a generation step.

The KV cache stays in ONNX Runtime's own buffers (OrtValues) between decode steps; only the last position's
logits come back to torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from jetmoe.errors import ExportError, InputError

MANIFEST_NAME = "export.json"
_NUMPY = {"fp32": np.float32, "fp16": np.float16}


def read_manifest(model_path: Path) -> dict[str, Any]:
    path = Path(model_path).parent / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: {model_path} was not written by `jetmoe export`") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None


class OnnxModel:
    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"no ONNX model at {self.path}")
        manifest = read_manifest(self.path)
        self.config = JetMoeConfig.from_dict(manifest["config"])
        self.task = manifest["task"]
        self.dtype = manifest["dtype"]
        self.names = IoNames(self.config.num_hidden_layers, self.task, manifest["validation_outputs"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ExportError(f"ONNX Runtime providers {missing} are not available here; available: {available}")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self._ort = ort

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.names.outputs
        return dict(zip(names, self.session.run(names, feeds)))

    # ---- generation (jetmoe.generate.Step) -----------------------------------------------------------------

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 past: list[Any] | None) -> tuple[torch.Tensor, list[Any]]:
        if self.task != "causal-lm":
            raise InputError(f"{self.path} is a {self.task} export; generation needs a causal-lm export")
        ort = self._ort
        B = input_ids.shape[0]
        if past is None:
            shape = (B, self.config.num_key_value_heads, 0, self.config.kv_channels)
            empty = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=self._numpy_dtype()))
            past = [empty] * (2 * self.config.num_hidden_layers)
        feeds = {"input_ids": ort.OrtValue.ortvalue_from_numpy(input_ids.numpy().astype(np.int64)),
                 "attention_mask": ort.OrtValue.ortvalue_from_numpy(attention_mask.numpy().astype(np.int64)),
                 "position_ids": ort.OrtValue.ortvalue_from_numpy(position_ids.numpy().astype(np.int64))}
        feeds.update(zip([n for pair in self.names.past for n in pair], past))
        present = [n for pair in self.names.present for n in pair]
        values = self.session.run_with_ort_values(["logits", *present], feeds)
        logits = torch.from_numpy(values[0].numpy()[:, -1]).float()
        return logits, list(values[1:])

    def _numpy_dtype(self):
        if self.dtype not in _NUMPY:
            raise ExportError(f"ONNX Runtime generation from Python supports fp32 and fp16 exports, not {self.dtype}")
        return _NUMPY[self.dtype]

    def generate(self, prompts, **options) -> list[list[int]]:
        from jetmoe.generate import generate

        return generate(self, prompts, **{"eos_token_id": self.config.eos_token_ids,
                                          "pad_token_id": self.config.pad_token_id, **options})
