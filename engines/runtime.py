"""Run a built engine: numpy in/out for the validator, a KV-cached `Step` for generation.

    engine = JetMoeEngine("model.engine")              # checks model.engine.json against TensorRT and the GPU
    outputs = engine.infer({"input_ids": ..., ...})     # name -> numpy, like every runner
    tokens = engine.generate([[1, 306, 4658]], max_new_tokens=16)

Written against TensorRT's tensor-name API (10.x and 11.x): `set_optimization_profile_async`,
`set_input_shape`, `set_tensor_address`, `get_tensor_shape`, `execute_async_v3`. Device memory is torch CUDA
tensors on the engine's own stream.

KV cache: per layer and per key/value, two flat device buffers sized for [max_batch, H_kv, max_seq, Dh]. A step
reads `past` from one and the graph writes `present` ([B, H_kv, P+S, Dh], contiguous) into the other; the next
step swaps them. Nothing is allocated or copied per decode step, and every address is stable.

CUDA graphs: the exported graph concatenates past and new keys, so a decode step's shapes (P) change every
step, and a CUDA graph is only valid for the shapes it was captured with. The runtime therefore captures a decode
graph per (batch, past length, buffer parity) the second time that key is seen and replays it afterwards: a
repeated generation or benchmark with the same prompt lengths replays every step; a first generation runs
uncaptured. A per-step gain for every generation needs a static-length cache in the graph (TensorScatter into a
max_seq cache, TensorRT's KV-cache update layer): an export change, not done here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import EngineError, import_tensorrt, require_cuda_gpu
from engines.manifest import EngineManifest, check_compatible, read_manifest
from engines.profiles import select_profile
from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError

_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                 "BOOL": "bool", "INT8": "int8", "UINT8": "uint8"}


class JetMoeEngine:
    def __init__(self, engine_path: str | os.PathLike, *, cuda_graphs: bool = True, verbose: bool = False) -> None:
        import torch

        self.path = Path(engine_path)
        if not self.path.is_file():
            raise InputError(f"no TensorRT engine at {self.path}")
        self.manifest: EngineManifest = read_manifest(self.path)
        trt = import_tensorrt()
        gpu_name, cc = require_cuda_gpu()
        from engines.plugins import plugin_versions, register_plugins

        self.warnings = check_compatible(self.manifest, tensorrt_version=trt.__version__, gpu_name=gpu_name,
                                         compute_capability=cc, plugins=plugin_versions())
        for warning in self.warnings:
            print(f"warning: {warning}")
        if self.manifest.plugin_mode == "jit":
            register_plugins()  # the engine calls back into engines/plugins.py
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path} (see its log above)")
        self.context = self.engine.create_execution_context()
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        self.config: JetMoeConfig = self.manifest.model_config
        self.io_names: IoNames = self.manifest.io_names
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if self.input_names != self.io_names.inputs or set(self.output_names) != set(self.io_names.outputs):
            raise EngineError(f"{self.path} has inputs {self.input_names} and outputs {self.output_names}; its "
                              f"manifest describes {self.io_names.inputs} and {self.io_names.outputs}")
        self.dtypes = {n: getattr(torch, _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name]) for n in names}
        self._profile = -1
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, Any] = {}
        self._seen: set[tuple] = set()
        self._cache = _KvCache(self) if self.io_names.task == "causal-lm" else None

    # ---- numpy in, numpy out (the validator's runner contract) ------------------------------------------------

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.device(self.device):
            inputs = {name: self._to_device(name, feeds[name]) for name in self._required(feeds)}
            outputs = self._run(inputs)
            self.stream.synchronize()
        return {name: _to_numpy(t) for name, t in outputs.items()}

    def _required(self, feeds: dict[str, Any]) -> list[str]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing engine inputs {missing}; got {sorted(feeds)}")
        return self.input_names

    def _to_device(self, name: str, value):
        import torch

        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
        return tensor.to(self.device, self.dtypes[name], non_blocking=True).contiguous()

    def _run(self, inputs: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Enqueue one execution on self.stream; outputs allocated here unless given (name -> tensor)."""
        import torch

        shapes = {name: tuple(t.shape) for name, t in inputs.items()}
        profile = select_profile(self.manifest.profiles, shapes)
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self._profile = profile
        keep = []
        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tensor.shape):
                raise InputError(f"engine refused shape {tuple(tensor.shape)} for input {name}")
            if tensor.numel() == 0:  # an empty past: TensorRT still wants a valid address
                tensor = torch.empty(1, dtype=tensor.dtype, device=self.device)
                keep.append(tensor)
            self.context.set_tensor_address(name, tensor.data_ptr())
        unset = self.context.infer_shapes()
        if unset:
            raise EngineError(f"input shapes not set for {unset}")
        outputs = dict(outputs or {})
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if name not in outputs:
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            elif tuple(outputs[name].shape) != shape:
                raise EngineError(f"output {name} has shape {shape}, its buffer {tuple(outputs[name].shape)}")
            target = outputs[name] if outputs[name].numel() else torch.empty(1, dtype=self.dtypes[name],
                                                                             device=self.device)
            keep.append(target)
            self.context.set_tensor_address(name, target.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run {self.path} on shapes {shapes}")
        self._keep = keep  # alive until the next run
        return outputs

    # ---- generation -----------------------------------------------------------------------------------------

    def step(self, input_ids, attention_mask, position_ids, past):
        """`jetmoe.generate.Step`: logits of the last position [B, V] (CPU float32) and the cache handle."""
        import torch

        if self._cache is None:
            raise InputError(f"{self.path} is a {self.io_names.task} engine: it has no KV cache to generate with")
        with torch.cuda.device(self.device):
            B, S = input_ids.shape
            if past is None:
                self._cache.reset(B)
            P = self._cache.length
            if P + S > self.manifest.limits.max_seq:
                raise InputError(f"{P} cached + {S} new tokens exceed the engine's max_seq "
                                 f"{self.manifest.limits.max_seq}; rebuild with a larger --max-seq")
            inputs = {"input_ids": self._to_device("input_ids", input_ids),
                      "attention_mask": self._to_device("attention_mask", attention_mask),
                      "position_ids": self._to_device("position_ids", position_ids)}
            inputs.update(self._cache.past(B, P))
            logits = self._run_step(inputs, self._cache.present(B, P + S), decode=S == 1 and P > 0)
            self.stream.synchronize()
            logits = logits[:, -1].float().cpu()
            self._cache.advance(P + S)
        return logits, self._cache

    def _run_step(self, inputs: dict, present: dict, decode: bool):
        """Run one step into the cache's present buffers; return the logits tensor (on self.stream)."""
        import torch

        key = (inputs["input_ids"].shape[0], self._cache.length, self._cache.parity)
        if not (self.cuda_graphs and decode):
            return self._run(inputs, present)["logits"]
        static = self._graphs.get(key)
        if static is not None:  # same shapes and buffer addresses as at capture: refill the inputs, replay
            for name in ("input_ids", "attention_mask", "position_ids"):
                static[name].copy_(inputs[name])
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                static["graph"].replay()
            return static["logits"]
        outputs = self._run(inputs, present)  # also the run TensorRT needs after a shape change, before capture
        if key in self._seen:
            graph = torch.cuda.CUDAGraph()
            self.stream.synchronize()
            with torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self._graphs[key] = {"graph": graph, "logits": outputs["logits"],
                                 **{n: inputs[n] for n in ("input_ids", "attention_mask", "position_ids")}}
        self._seen.add(key)
        return outputs["logits"]

    def generate(self, prompts, **options) -> list[list[int]]:
        """`jetmoe.generate.generate` with this engine as the step: the same options as eager."""
        from jetmoe.generate import generate

        return generate(self.step, prompts, **{"eos_token_id": self.config.eos_token_ids,
                                                "pad_token_id": self.config.pad_token_id, **options})


class _KvCache:
    """Ping-pong flat buffers per cache tensor; views of the exact [B, H_kv, L, Dh] shapes the engine wants."""

    def __init__(self, engine: JetMoeEngine) -> None:
        import torch

        c, limits = engine.config, engine.manifest.limits
        self.H, self.Dh = c.num_key_value_heads, c.kv_channels
        size = limits.max_batch * self.H * limits.max_seq * self.Dh
        self.past_names = [n for pair in engine.io_names.past for n in pair]
        self.present_names = [n for pair in engine.io_names.present for n in pair]
        self.buffers = [[torch.empty(size, dtype=engine.dtypes[name], device=engine.device) for _ in range(2)]
                        for name in self.past_names]
        self.max_batch = limits.max_batch
        self.batch, self.length, self.parity = 0, 0, 0

    def reset(self, batch: int) -> None:
        if batch > self.max_batch:
            raise InputError(f"batch {batch} exceeds the engine's max_batch {self.max_batch}")
        self.batch, self.length, self.parity = batch, 0, 0

    def _views(self, side: int, B: int, L: int) -> list:
        return [bufs[side][: B * self.H * L * self.Dh].view(B, self.H, L, self.Dh) for bufs in self.buffers]

    def past(self, B: int, P: int) -> dict:
        return dict(zip(self.past_names, self._views(self.parity, B, P)))

    def present(self, B: int, L: int) -> dict:
        return dict(zip(self.present_names, self._views(1 - self.parity, B, L)))

    def advance(self, length: int) -> None:
        self.length, self.parity = length, 1 - self.parity


def _to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.cpu().numpy()
