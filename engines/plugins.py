"""TensorRT Quickly Deployable Plugins (`tensorrt.plugin`) for the `jetmoe` ops (docs/ops.md).

One plugin per op, `jetmoe::expert_map` and `jetmoe::expert_reduce`, matched by TensorRT's ONNX parser
(>= 10.15) to the exported nodes through their `plugin_namespace`/`plugin_version` attributes. Each plugin has:
- `register`: the output descriptor from the input shape expressions (map: [T, K, N], reduce: [T, D]; static,
  nothing data-dependent), same type as the activations.
- `autotune`: fp32/fp16/bf16 activations (all float I/O one type), int32 or int64 `expert_idx` (ONNX TopK
  gives int64; a TensorRT TopK may give int32), LINEAR; tactics: see "Tactics" below.
- `aot_impl`: one Triton kernel compiled to PTX (plugin_kernels.py) at PTX ISA 8.0 (engines/kernels/aot.py),
  grid and int32 extra args as symbolic shape expressions from `plugin_kernels.launch`: map grid
  (max(T*K, 1), cdiv(N, BLOCK_N)), args (T*K, K, N, D, E); reduce grid (max(T, 1), cdiv(D, BLOCK_D)), args
  (T, K, N, D, E). The kernel is embedded in the engine: trtexec and the C++ runtime run it without Python.
- `impl` (JIT): the `jetmoe::` torch ops on torch views of TensorRT's buffers: the grouped-GEMM Triton launchers
  of engines/kernels where triton is importable, jetmoe.ops' eager implementation otherwise. Needs this module
  importable (and `register_plugins()` called) in the process that runs the engine.

The multi-kernel problem, honestly: a QDP `aot_impl` returns exactly ONE kernel and gets no workspace. The
grouped GEMMs of engines/kernels are 2 launches (align + GEMM) for map and 3 (align + GEMM + sum) for reduce,
with int32 scratch between them, so they cannot be an AOT plugin. The AOT path therefore uses single-launch
row kernels (one program per (token, slot) row, expert id read in the kernel): exact and right for decode, but
they re-read expert weights per row, so long prefill is slower than the grouped GEMM (which the JIT path uses).
Not done: splitting each op in the graph into align/GEMM/sum plugins (would need new ONNX nodes and a fixed
BLOCK_M per engine), and a single-launch grouped GEMM (needs in-kernel alignment or a persistent kernel).

Tactics: one autotune function serves both implementations, and QDP gives it no way to tell which one is being
built (tensorrt.plugin 11.4: `_TemplatePluginBase.get_supported_format_combinations` calls it with the tensor
descriptors only, for the JIT and the AOT plugin class alike). The AOT kernels have real tactics (the tiles of
plugin_kernels.TACTICS); `impl` has one way to run. So the builder says which mode it builds, with
`building(mode)` around `build_serialized_network` (the same value it turns into the PREFER_*_PYTHON_PLUGINS
network flag): JIT advertises no custom tactic (TensorRT's default tactic 0, nothing timed), AOT all of
TACTICS. Outside a `building` block (a build not made by engines/builder.py) the AOT list is advertised: for a
JIT build that only costs timing identical runs. `impl` takes no `tactic` parameter (QDP then calls it without
one, `expects_tactic` False), as NVIDIA's single-tactic sample does (samples/python/quickly_deployable_plugins).

Attributes: the ops have none (every size comes from the input shapes), and `PLUGINS[...].attributes` is the
one place that says so; the functions below take exactly inputs + attributes, checked at registration. Keep it
that way: TensorRT 11.4's `aot_impl` receives ALL registered attributes, in registration order.

Importing this module needs neither TensorRT nor triton; `register_plugins()` imports `tensorrt.plugin`.
"""

import contextlib
import dataclasses
import inspect
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

from jetmoe import dtypes
from jetmoe.errors import InputError, InternalError, Unavailable
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, NAMESPACE, OPS, VERSION

FLOAT_TYPES = tuple(t.qdp for t in dtypes.FLOATS)
INDEX_TYPES = tuple(t.qdp for t in dtypes.INDEXES)


@dataclasses.dataclass(frozen=True)
class PluginSpec:
    """Plain-Python description of a plugin; the registration code below is built from it."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[tuple[str, type, Any], ...] = ()  # (name, type, default), in registration order
    namespace: str = NAMESPACE
    version: str = VERSION  # QDPs are always version "1"; the ONNX nodes carry plugin_version="1" to match

    @property
    def plugin_id(self) -> str:
        return f"{self.namespace}::{self.name}"

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.attributes)

    def parameters(self, kind: str) -> tuple[str, ...]:
        """The parameter names QDP requires of each decorated function (every attribute, everywhere)."""
        tail = {"register": (), "autotune": ("outputs",), "aot_impl": ("outputs", "tactic"),
                "impl": ("outputs", "stream")}[kind]
        return self.inputs + self.attribute_names + tail


PLUGINS = {name: PluginSpec(op.name, op.input_names, op.output_names) for name, op in OPS.items()}


def plugin_versions() -> dict[str, str]:
    return {spec.plugin_id: spec.version for spec in PLUGINS.values()}


_registered = False
_build_mode: str | None = None  # "aot" / "jit" while engines/builder.py builds; see "Tactics" above
_build_lock = threading.Lock()


@contextlib.contextmanager
def building(mode: str) -> Iterator[None]:
    """Tell the autotune functions which implementation TensorRT is building ("aot" or "jit") for the duration
    of a build. One build at a time per process: the mode is process state, as the QDP registry is."""
    global _build_mode
    if mode not in ("aot", "jit"):
        raise InputError(f"plugin mode {mode!r} is not 'aot' or 'jit'")
    if not _build_lock.acquire(blocking=False):
        raise InputError(f"a {_build_mode} engine build is already running in this process; build one at a time")
    _build_mode = mode
    try:
        yield
    finally:
        _build_mode = None
        _build_lock.release()


def advertised_tactics() -> list[int]:
    """The custom tactics the autotune functions offer now: none for a JIT build, TACTICS otherwise."""
    from engines import plugin_kernels

    return [] if _build_mode == "jit" else sorted(plugin_kernels.TACTICS)


def register_plugins() -> None:
    """Register both plugins with TensorRT's plugin registry (idempotent). Call before parsing or deserialising."""
    global _registered
    if _registered:
        return
    from engines.flavour import import_tensorrt

    trt = import_tensorrt()
    try:
        import tensorrt.plugin as trtp
    except ImportError:
        raise Unavailable(f"TensorRT {trt.__version__} has no tensorrt.plugin (Quickly Deployable Plugins need "
                          f">= 10.6; AOT ones >= 10.9)") from None
    if not hasattr(trtp, "KernelLaunchParams"):
        raise Unavailable("this TensorRT has no ahead-of-time Quickly Deployable Plugins (needs TensorRT >= 10.9)")
    functions = define(trtp)
    for name, spec in PLUGINS.items():
        fns = functions[name]
        check_signatures(spec, fns)
        if spec.plugin_id in getattr(getattr(trtp, "_lib", None), "QDP_REGISTRY", {}):  # an earlier import did it
            continue
        trtp.register(spec.plugin_id)(fns["register"])
        trtp.autotune(spec.plugin_id)(fns["autotune"])
        trtp.aot_impl(spec.plugin_id)(fns["aot_impl"])
        trtp.impl(spec.plugin_id)(fns["impl"])
    _registered = True


def check_signatures(spec: PluginSpec, fns: dict[str, Callable]) -> None:
    for kind, fn in fns.items():
        got = tuple(inspect.signature(fn).parameters)
        if got != spec.parameters(kind):
            raise InternalError(f"{spec.plugin_id} {kind} takes {got}, but its description says "
                              f"{spec.parameters(kind)}")


# ---- the plugin functions -----------------------------------------------------------------------------------
# Built by `define(trtp)` so that their annotations (which QDP inspects) are real `tensorrt.plugin` classes
# without importing TensorRT at module import; tests call `define` with a stand-in namespace.


def define(trtp, compile_kernel: Callable | None = None) -> dict[str, dict[str, Callable]]:
    """name -> {register, autotune, aot_impl, impl} for both plugins, annotated with `trtp`'s classes.

    `compile_kernel(op, activation_desc, index_desc, tactic) -> AotKernel`: default `compiled` below (PTX for
    the current GPU's compute capability); tests pass a stand-in."""
    from engines import plugin_kernels

    TensorDesc, Tensor = trtp.TensorDesc, trtp.Tensor
    AotReturn = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]

    def combinations(num_float_before_idx: int, num_float_after_idx: int) -> list:
        tactics = advertised_tactics()
        floats = "|".join(FLOAT_TYPES)
        out = []
        for index_type in INDEX_TYPES:
            io = [floats] * num_float_before_idx + [index_type] + [floats] * num_float_after_idx
            # no tactics: None, QDP's "default tactic 0 only" (an empty list would mean the same)
            out.append(trtp.AutoTuneCombination(", ".join(io), "LINEAR", tactics or None))
        return out

    def launch_params(op: str, descs: tuple, kernel, tactic: int):
        grid, args = plugin_kernels.launch(op, [d.shape_expr for d in descs], tactic, max_=trtp.max,
                                           cdiv=trtp.cdiv)
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y = grid
        params.block_x = kernel.num_warps * 32
        params.shared_mem = kernel.shared_memory
        return params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in args])

    def compiled(op: str, desc, index_desc, tactic: int):
        import torch

        if not torch.cuda.is_available():
            raise Unavailable("compiling the AOT kernels needs the target GPU's compute capability: no CUDA GPU")
        major, minor = torch.cuda.get_device_capability()
        return plugin_kernels.compile_ptx(op, _dtype_name(desc.dtype), _dtype_name(index_desc.dtype), tactic,
                                          major * 10 + minor)

    compile_for = compile_kernel or compiled

    def kernel_for(op: str, desc, index_desc, tactic: int):
        """(AotKernel, tactic actually compiled): TensorRT's default tactic 0 runs DEFAULT_TACTIC's tiles."""
        tactic = tactic if tactic in plugin_kernels.TACTICS else plugin_kernels.DEFAULT_TACTIC
        return compile_for(op, desc, index_desc, tactic), tactic

    # expert_map: x [T, D], expert_idx [T, K], weight [E, N, D] -> y [T, K, N]

    def map_register(x: TensorDesc, expert_idx: TensorDesc, weight: TensorDesc) -> tuple[TensorDesc]:
        return output_descs(trtp, EXPERT_MAP, x, expert_idx, weight)

    def map_autotune(x: TensorDesc, expert_idx: TensorDesc, weight: TensorDesc,
                     outputs: tuple[TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return combinations(1, 2)  # x, expert_idx, weight, y

    def map_aot_impl(x: TensorDesc, expert_idx: TensorDesc, weight: TensorDesc, outputs: tuple[TensorDesc],
                     tactic: int) -> AotReturn:
        kernel, tactic = kernel_for(EXPERT_MAP.name, x, expert_idx, tactic)
        params, args = launch_params(EXPERT_MAP.name, (x, expert_idx, weight), kernel, tactic)
        return kernel.name, kernel.ptx, params, args

    def map_impl(x: Tensor, expert_idx: Tensor, weight: Tensor, outputs: tuple[Tensor], stream: int) -> None:
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            _run_into(outputs[0], torch_op(EXPERT_MAP.name), x, expert_idx, weight)

    # expert_reduce: h [T, K, N], expert_idx [T, K], gates [T, K], weight [E, D, N], bias [D] -> y [T, D]

    def reduce_register(h: TensorDesc, expert_idx: TensorDesc, gates: TensorDesc, weight: TensorDesc,
                        bias: TensorDesc) -> tuple[TensorDesc]:
        return output_descs(trtp, EXPERT_REDUCE, h, expert_idx, gates, weight, bias)

    def reduce_autotune(h: TensorDesc, expert_idx: TensorDesc, gates: TensorDesc, weight: TensorDesc,
                        bias: TensorDesc, outputs: tuple[TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return combinations(1, 4)  # h, expert_idx, gates, weight, bias, y

    def reduce_aot_impl(h: TensorDesc, expert_idx: TensorDesc, gates: TensorDesc, weight: TensorDesc,
                        bias: TensorDesc, outputs: tuple[TensorDesc], tactic: int) -> AotReturn:
        kernel, tactic = kernel_for(EXPERT_REDUCE.name, h, expert_idx, tactic)
        params, args = launch_params(EXPERT_REDUCE.name, (h, expert_idx, gates, weight, bias), kernel, tactic)
        return kernel.name, kernel.ptx, params, args

    def reduce_impl(h: Tensor, expert_idx: Tensor, gates: Tensor, weight: Tensor, bias: Tensor,
                    outputs: tuple[Tensor], stream: int) -> None:
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            _run_into(outputs[0], torch_op(EXPERT_REDUCE.name), h, expert_idx, gates, weight, bias)

    return {
        EXPERT_MAP.name: {"register": map_register, "autotune": map_autotune, "aot_impl": map_aot_impl,
                       "impl": map_impl},
        EXPERT_REDUCE.name: {"register": reduce_register, "autotune": reduce_autotune, "aot_impl": reduce_aot_impl,
                          "impl": reduce_impl},
    }


def output_descs(trtp, op, *inputs) -> tuple:
    """The output descriptors of `op` from the contract: each output dim is the size of an input's dim (map:
    [T, K, N] from x, expert_idx, weight), the type the float inputs' (the first input is always a float one)."""
    return tuple(trtp.from_shape_expr(tuple(inputs[i].shape_expr[axis] for i, axis in dims), dtype=inputs[0].dtype)
                 for dims in op.output_dims())


def _run_into(output, op: Callable, *inputs) -> None:
    out = torch_view(output)
    out.copy_(op(*(torch_view(t) for t in inputs)))


def torch_op(name: str) -> Callable:
    """The `jetmoe::` torch op, with the Triton launchers as its CUDA kernels where triton is importable."""
    import torch

    import jetmoe.ops  # noqa: F401  (defines the ops)
    from engines.kernels import register_cuda_kernels

    register_cuda_kernels()
    return getattr(torch.ops.jetmoe, name)


def _dtype_name(trt_dtype) -> str:
    """The torch name (float32, ...) of a TensorRT DataType the plugins support."""
    found = dtypes.lookup(trt_dtype)
    if found is None or found not in dtypes.FLOATS + dtypes.INDEXES:
        raise InputError(f"jetmoe plugins do not support TensorRT type {trt_dtype}")
    return found.hf_name


_TORCH_CODES = {"float32": ("<f4", None), "float16": ("<f2", None), "bfloat16": ("<i2", "bfloat16"),
                "int32": ("<i4", None), "int64": ("<i8", None)}


def torch_view(tensor):
    """A torch CUDA tensor over a `tensorrt.plugin.Tensor`'s memory (no copy). bf16 goes through int16, since
    the plugin Tensor's `__cuda_array_interface__` refuses bf16."""
    import numpy as np
    import torch

    name = _dtype_name(tensor.dtype)
    typestr, view_as = _TORCH_CODES[name]
    itemsize = np.dtype(typestr).itemsize
    shape = tuple(tensor.shape)

    interface = {"shape": shape, "typestr": typestr, "data": (tensor.data_ptr, False),
                 "strides": tuple(s * itemsize for s in tensor.strides), "version": 3}
    view = torch.as_tensor(types.SimpleNamespace(__cuda_array_interface__=interface), device="cuda")
    return view.view(getattr(torch, view_as)) if view_as else view
