"""A built engine behind the runner contract (jetmoe/runner.py): TensorRT or TensorRT-RTX, on a CUDA GPU.

    with TrtRunner("model.engine") as runner:            # checks model.engine.json against TensorRT and the GPU
        outputs = runner.infer(feeds)                     # name -> torch CUDA tensor
        tokens = jetmoe.generate.generate(runner, [[1, 306, 4658]], max_new_tokens=16)

Written against TensorRT's tensor-name API (10.x, 11.x, RTX 1.x): `set_input_shape`, `set_tensor_address`,
`get_tensor_shape`, `execute_async_v3`, with every boolean result checked.

Design (written down because none of it can run on the machines this was written on):
- **One execution context per optimization profile** (prefill, decode), each bound to its profile once, at
  activation: TensorRT applies a profile switch only at the next enqueue, so switching one context's profile
  per call is a trap (NVIDIA/TensorRT#3798). The contexts share one device-memory block (created with the
  USER_MANAGED allocation strategy, then `set_device_memory`), sized for the largest profile: they run one
  at a time on the runner's stream, so they never need it at the same time.
- **Value semantics for the KV cache**: inputs are read, never written; every output is a fresh tensor from
  torch's caching allocator (no host round trip: a decode step feeds back the previous step's device tensors).
  One cache can therefore feed many steps, as benchmarks and the validator's cases do.
- **CUDA graphs are off by default** (`cuda_graphs=True` turns them on). The exported graph concatenates the
  cache, so every decode step has new shapes and a captured graph serves only a repeat of the same (batch,
  past length). When on: a graph is captured the second time a decode key is seen, on its own execution
  context (one graph per context, after a warm-up enqueue, as trtexec does; sharing the device memory
  block), into static input and output buffers that belong to the graph (all of them: nothing it writes is
  freed while it lives); capture runs in thread-local mode and a failed capture (execute_async_v3 returning
  False) drops the graph. A replay copies the feeds into the static inputs and returns clones of the static
  outputs (value semantics again): two cache-sized device copies per step, against the kernel launches the
  graph saves. A key whose capture failed runs uncaptured from then on (no new context and capture per step).
  At most `max_graphs` graphs are kept (least recently used dropped).
- Every CUDA call of the runner (streams, the device, graphs and their capture) goes through `_Cuda`, the one
  place tests/engines/test_runtime.py replaces to run this bookkeeping on a CPU against a stand-in TensorRT.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines import flavour as flavours
from engines.manifest import EngineManifest, check_compatible, read_manifest
from engines.profiles import select_profile
from jetmoe import dtypes
from jetmoe.errors import EngineError, InputError
from jetmoe.runner import Runner

log = logging.getLogger(__name__)


class TrtRunner(Runner):
    def __init__(self, engine_path: str | os.PathLike, *, cuda_graphs: bool = False, max_graphs: int = 8,
                 verbose: bool = False) -> None:
        super().__init__()
        if not isinstance(max_graphs, int) or isinstance(max_graphs, bool) or max_graphs < 1:
            raise InputError(f"max_graphs must be a positive integer, got {max_graphs!r}")
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise InputError(f"no TensorRT engine at {self.path}")
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.verbose = verbose
        self.manifest: EngineManifest = read_manifest(self.path)
        self.name = self.manifest.backend

    # ---- activation -------------------------------------------------------------------------------------------

    def activate_impl(self) -> None:
        trt = flavours.import_tensorrt(self.manifest.backend)
        gpu_name, cc = flavours.require_cuda_gpu()
        plugins = {}
        if self.manifest.dispatch == "plugin":
            from engines.plugins import plugin_versions

            plugins = plugin_versions()
        for warning in check_compatible(self.manifest, tensorrt_version=trt.__version__, gpu_name=gpu_name,
                                        compute_capability=cc, plugins=plugins):
            log.warning("%s", warning)
        if self.manifest.plugin_mode == "jit":
            from engines.plugins import register_plugins

            register_plugins()  # the engine calls back into engines/plugins.py
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.VERBOSE if self.verbose else trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path} (see its log above)")
        self.config = self.manifest.model_config
        self.io_names = self.manifest.io_names
        self.dtype = dtypes.float_dtype(self.manifest.dtype)
        self.max_batch, self.max_seq = self.manifest.limits.max_batch, self.manifest.limits.max_seq
        self._cuda = _Cuda()
        self.device = self._cuda.device()
        self.stream = self._cuda.stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        check_io(self.io_names.inputs, self.io_names.outputs,
                 [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT],
                 [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT], str(self.path))
        self.tensor_dtypes = {n: dtypes.dtype(self.engine.get_tensor_dtype(n)).torch for n in names}
        self._memory = torch.empty(self._device_memory_size(), dtype=torch.uint8, device=self.device)
        self._contexts = [self._context(profile) for profile in range(len(self.manifest.profiles))]
        self._graphs: collections.OrderedDict[tuple, dict[str, Any]] = collections.OrderedDict()
        self._seen: set[tuple] = set()
        self._uncapturable: set[tuple] = set()  # decode keys whose capture failed: they run uncaptured
        self._keep: list[Tensor] = []

    def deactivate_impl(self) -> None:
        self._graphs.clear()  # graphs and their contexts first: they run in the shared memory block
        self._contexts = []
        self.engine = None
        self._memory = None
        self._keep = []

    def _device_memory_size(self) -> int:
        sizes = [self.engine.get_device_memory_size_for_profile_v2(i) for i in range(len(self.manifest.profiles))]
        return max(sizes + [1])

    def _context(self, profile: int):
        """An execution context bound to `profile`, running in the shared device-memory block."""
        trt = self._trt
        context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.path}")
        context.set_device_memory(self._memory.data_ptr(), self._memory.numel())
        if not context.set_optimization_profile_async(profile, self.stream.cuda_stream):
            raise EngineError(f"TensorRT refused optimization profile {profile} of {self.path}")
        self.stream.synchronize()
        return context

    # ---- inference ------------------------------------------------------------------------------------------

    def infer_impl(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        with self._cuda.on_device(self.device):
            inputs = {name: t.to(self.device, self.tensor_dtypes[name], non_blocking=True).contiguous()
                      for name, t in feeds.items()}
            shapes = {name: tuple(t.shape) for name, t in inputs.items()}
            profile = select_profile(self.manifest.profiles, shapes)
            key = (profile, tuple(sorted(shapes.items())))
            self.stream.wait_stream(self._cuda.current_stream(self.device))
            if self.cuda_graphs and self.manifest.profiles[profile].name == "decode":
                outputs = self._infer_graph(key, profile, inputs)
            else:
                outputs = self._enqueue(self._contexts[profile], inputs, shapes)
            self.stream.synchronize()
        return outputs

    def _enqueue(self, context, inputs: dict[str, Tensor], shapes: dict, outputs: dict[str, Tensor] | None = None,
                 ) -> dict[str, Tensor]:
        """Bind shapes and addresses on `context` and enqueue one execution on the runner's stream."""
        keep = bind(context, inputs, self.device, inputs=True)
        unset = context.infer_shapes()
        if unset:
            raise EngineError(f"{self.path}: input shapes not set for {unset}")
        outputs = outputs if outputs is not None else {
            name: torch.empty(tuple(context.get_tensor_shape(name)), dtype=self.tensor_dtypes[name],
                              device=self.device) for name in self.io_names.outputs}
        keep += bind(context, outputs, self.device, inputs=False)
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run {self.path} on shapes {shapes}")
        self._keep = keep  # placeholders of empty tensors: alive until the stream is synchronised
        return outputs

    def _infer_graph(self, key: tuple, profile: int, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        graph = self._graphs.get(key)
        if graph is None:
            shapes = dict(key[1])
            if key not in self._seen or key in self._uncapturable:
                self._seen.add(key)
                return self._enqueue(self._contexts[profile], inputs, shapes)
            graph = self._capture(profile, inputs, shapes)
            if graph is None:
                self._uncapturable.add(key)
                return self._enqueue(self._contexts[profile], inputs, shapes)
            self._graphs[key] = graph
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        with self._cuda.use_stream(self.stream):
            for name, tensor in inputs.items():
                graph["inputs"][name].copy_(tensor)
            graph["graph"].replay()
            return {name: t.clone() for name, t in graph["outputs"].items()}

    def _capture(self, profile: int, inputs: dict[str, Tensor], shapes: dict) -> dict[str, Any] | None:
        """A CUDA graph of one execution on a new context (see the module docstring); None if capture failed."""
        context = self._context(profile)
        static_in = {name: t.clone() for name, t in inputs.items()}
        static_out = self._enqueue(context, static_in, shapes)  # the warm-up enqueue, and the output buffers
        keep = self._keep
        self.stream.synchronize()
        graph = self._cuda.graph()
        try:
            with self._cuda.capture(graph, self.stream, capture_error_mode="thread_local"):
                ok = context.execute_async_v3(self.stream.cuda_stream)
        except RuntimeError as e:
            log.warning("CUDA graph capture failed for %s (%s): running uncaptured", shapes, e)
            return None
        if not ok:
            log.warning("TensorRT could not enqueue while capturing a CUDA graph for %s: running uncaptured", shapes)
            return None
        return {"graph": graph, "context": context, "inputs": static_in, "outputs": static_out, "keep": keep}


class _Cuda:
    """The runner's CUDA calls, each a thin torch.cuda one: the seam a CPU test replaces (monkeypatch `_Cuda`)."""

    def device(self) -> torch.device:  # where the runner allocates: the current CUDA device
        return torch.device("cuda", torch.cuda.current_device())

    def stream(self, device: torch.device) -> torch.cuda.Stream:
        return torch.cuda.Stream(device)

    def current_stream(self, device: torch.device) -> torch.cuda.Stream:
        return torch.cuda.current_stream(device)

    def on_device(self, device: torch.device):  # context manager: `device` is current
        return torch.cuda.device(device)

    def use_stream(self, stream: torch.cuda.Stream):  # context manager: `stream` is current
        return torch.cuda.stream(stream)

    def graph(self) -> torch.cuda.CUDAGraph:
        return torch.cuda.CUDAGraph()

    def capture(self, graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream, capture_error_mode: str):
        """Context manager: the work enqueued on `stream` inside it is captured into `graph`."""
        return torch.cuda.graph(graph, stream=stream, capture_error_mode=capture_error_mode)


def bind(context, tensors: dict[str, Tensor], device: torch.device, inputs: bool) -> list[Tensor]:
    """Set every tensor's address (and, for `inputs`, its shape) on `context`; EngineError on a refusal. An empty
    tensor gets a 1-element placeholder (TensorRT wants a valid address); the placeholders are returned."""
    keep = []
    for name, tensor in tensors.items():
        if inputs and not context.set_input_shape(name, tuple(tensor.shape)):
            raise InputError(f"the engine refused shape {tuple(tensor.shape)} for input {name}")
        if tensor.numel() == 0:
            tensor = torch.empty(1, dtype=tensor.dtype, device=device)
            keep.append(tensor)
        if not context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineError(f"TensorRT refused the address of {name}")
    return keep


def check_io(want_inputs: list[str], want_outputs: list[str], inputs: list[str], outputs: list[str],
             where: str) -> None:
    """The engine's I/O tensors against the manifest's, by name (TensorRT promises no order)."""
    problems = []
    for kind, want, have in (("inputs", want_inputs, inputs), ("outputs", want_outputs, outputs)):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        problems += [f"missing {kind} {missing}"] if missing else []
        problems += [f"unexpected {kind} {extra}"] if extra else []
    if problems:
        raise EngineError(f"{where} does not have the I/O its manifest describes: {'; '.join(problems)}")
