"""ONNX Runtime behind the runner contract (jetmoe/runner.py): an exported model.onnx, CPU or CUDA provider.

    with OnnxrtRunner("out/model.onnx", provider="cpu", threads=2) as runner:
        outputs = runner.infer(feeds)                 # or: jetmoe.generate.generate(runner, prompts)

Activation reads export.json, checks that the recorded files (model.onnx, model.onnx.data, model.ort.onnx) have
their recorded sizes, creates the session and checks its inputs against the manifest (a manifest edited to lie is
refused, not run). The session runs the export's ONNX Runtime graph, model.ort.onnx (export/ort_graph.py: same
weights, nothing for ONNX Runtime to fold or copy), where export.json records one: every plugin-dispatch export;
a portable export's model.onnx runs as is, and so does the model.onnx of an unrolled or quantized copy
(`"dispatch": "unrolled"`: export/unrolled.py, `jetmoe quantize`). bf16 exports are refused: ONNX Runtime's CPU
provider has no bf16 kernels (documented in docs/support.md).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from export.manifest import model_path, read_manifest
from export.ort_graph import ORT_MODEL_NAME
from jetmoe.errors import ExportError, InputError, Unavailable
from jetmoe.runner import Runner

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxrtRunner(Runner):
    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        if provider not in PROVIDERS:
            raise InputError(f"ONNX Runtime provider {provider!r} is not one of {sorted(PROVIDERS)}")
        if threads is not None and threads < 1:
            raise InputError(f"threads must be a positive integer, got {threads}")
        self.path = model_path(path)
        self.provider = provider
        self.threads = threads
        self.name = f"onnxruntime-{provider}"
        self.session = None

    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise Unavailable("onnxruntime is not installed: pip install 'jetmoe-trt[ort]'") from None
        manifest = read_manifest(self.path)
        manifest.verify_files(self.path.parent, sha256=False)
        if manifest.dtype == "bf16":
            raise Unavailable(f"{self.path} is a bf16 export, and ONNX Runtime has no bf16 kernels for it: "
                              f"run it in TensorRT, or export --dtype fp16 or fp32 for ONNX Runtime")
        available = ort.get_available_providers()
        if PROVIDERS[self.provider][0] not in available:
            raise Unavailable(f"{PROVIDERS[self.provider][0]} is not available in this onnxruntime (has {available})")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        graph = self.path.with_name(ORT_MODEL_NAME) if ORT_MODEL_NAME in manifest.files else self.path
        if graph.name == ORT_MODEL_NAME:  # its expert views are graph inputs on purpose: ORT warns once for each
            options.log_severity_level = 3  # errors only (768 warnings at jetmoe-8b size)
        try:
            session = ort.InferenceSession(str(graph), options, providers=PROVIDERS[self.provider])
        except Exception as e:  # ORT raises its own exception types; the first line of the message is what matters
            raise ExportError(f"ONNX Runtime cannot load {graph}: {str(e).strip().splitlines()[0]}") from None
        self.config = manifest.model_config
        self.io_names = manifest.io_names
        self.dtype = manifest.float_type
        graph_inputs = [i.name for i in session.get_inputs()]
        if graph_inputs != self.io_names.inputs:
            raise ExportError(f"export.json does not describe {graph}: the model has {len(graph_inputs)} inputs "
                              f"({graph_inputs[:4]}...), the manifest {len(self.io_names.inputs)}; export again")
        cache_type = next((i.type for i in session.get_inputs() if i.name.startswith("past_key_values.")), None)
        if cache_type is not None and cache_type != self.dtype.onnx_type:
            raise ExportError(f"export.json says {self.dtype} but {graph}'s cache inputs are {cache_type}: "
                              f"export again")
        missing = [n for n in self.io_names.outputs if n not in {o.name for o in session.get_outputs()}]
        if missing:
            raise ExportError(f"{graph} lacks the outputs {missing[:4]} that export.json lists: export again")
        self.session = session

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        arrays = {name: np.ascontiguousarray(t.numpy()) for name, t in feeds.items()}
        names = self.io_names.outputs
        values = self.session.run(names, arrays)
        return {name: torch.from_numpy(value) for name, value in zip(names, values, strict=True)}

