"""Launch an AOT plugin kernel's PTX through the CUDA driver API, as TensorRT's Quickly Deployable Plugins do,
without TensorRT: for checking on a GPU the exact PTX an engine embeds (scripts/gpu_check.py).

What a QDP `aot_impl` hands TensorRT, and what this module does with the same facts:
    kernel name + PTX            -> cuModuleLoadDataEx (the driver JIT-compiles the PTX; its error log is kept)
                                    + cuModuleGetFunction
    KernelLaunchParams           -> grid (plugin_kernels.launch), block 32 * num_warps, dynamic shared memory
    SymIntExprs (int32 extras)   -> kernel arguments: input pointers, the int32 extras, output pointers
                                    (cuLaunchKernel's `kernelParams`: an array of pointers to each value)

The driver is reached with ctypes on libcuda (present wherever a driver is): no cuda-python or cupy needed.
The calls use the current CUDA context, which torch makes current once it has touched the GPU. Importing this
module needs nothing; `pack_args` and `with_ptx_version` are pure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Sequence

from jetmoe.errors import EngineError

CU_JIT_ERROR_LOG_BUFFER = 5  # cuda.h CUjit_option
CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # cuda.h CUfunction_attribute
STATIC_SHARED_LIMIT = 48 * 1024  # above this, dynamic shared memory must be opted into per function
_LOG_BYTES = 16384


class DriverError(EngineError):
    """A CUDA driver call failed (the CUresult's name and the JIT log, where there is one, are in the message)."""


def pack_args(pointers_in: Sequence[int], ints: Sequence[int], pointers_out: Sequence[int]):
    """cuLaunchKernel's `kernelParams` for QDP's AOT argument order: (void** array, the values it points to).
    Pointers are 8-byte CUdeviceptr values, the extras 4-byte int32; keep both returned objects alive until the
    launch has been enqueued."""
    values = ([ctypes.c_uint64(p) for p in pointers_in] + [ctypes.c_int32(i) for i in ints]
              + [ctypes.c_uint64(p) for p in pointers_out])
    for v, original in zip(values[len(pointers_in):len(pointers_in) + len(ints)], ints, strict=True):
        if v.value != original:
            raise ValueError(f"extra argument {original} does not fit in int32")
    array = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    return array, values


def with_ptx_version(ptx: str, version: str) -> str:
    """The same PTX under another `.version` line (to ask a driver which ISA versions it accepts)."""
    out, count = re.subn(r"^\.version\s+\d+\.\d+", f".version {version}", ptx, count=1, flags=re.MULTILINE)
    if count != 1:
        raise ValueError("not PTX: no .version line")
    return out


class Driver:
    """The few libcuda entry points an AOT launch needs."""

    def __init__(self, library: str | None = None) -> None:
        name = library or ctypes.util.find_library("cuda") or "libcuda.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as e:
            raise DriverError(f"no CUDA driver library ({name}): {e}") from None
        lib, vp, u = self.lib, ctypes.c_void_p, ctypes.c_uint
        lib.cuLaunchKernel.argtypes = [vp, u, u, u, u, u, u, u, vp, vp, vp]
        lib.cuModuleLoadDataEx.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p, u, ctypes.POINTER(ctypes.c_int),
                                           ctypes.POINTER(vp)]
        lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_char_p]
        lib.cuModuleUnload.argtypes = [vp]
        lib.cuFuncSetAttribute.argtypes = [vp, ctypes.c_int, ctypes.c_int]
        lib.cuCtxGetCurrent.argtypes = [ctypes.POINTER(vp)]

    def _check(self, result: int, what: str, log: bytes = b"") -> None:
        if result == 0:
            return
        name = ctypes.c_char_p()
        self.lib.cuGetErrorName(result, ctypes.byref(name))
        detail = log.decode(errors="replace").strip()
        raise DriverError(f"{what}: CUresult {result} ({(name.value or b'?').decode()})"
                          + (f": {detail}" if detail else ""))

    def version(self) -> int:
        """cuDriverGetVersion: 12040 = CUDA 12.4."""
        v = ctypes.c_int()
        self._check(self.lib.cuDriverGetVersion(ctypes.byref(v)), "cuDriverGetVersion")
        return v.value

    def require_context(self) -> None:
        ctx = ctypes.c_void_p()
        self._check(self.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:
            raise DriverError("no current CUDA context: touch the GPU with torch first (e.g. torch.cuda.init())")

    def load(self, ptx: str) -> ctypes.c_void_p:
        """cuModuleLoadDataEx of PTX text: the driver JIT-compiles it for the current device."""
        self.require_context()
        log = ctypes.create_string_buffer(_LOG_BYTES)
        options = (ctypes.c_int * 2)(CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        values = (ctypes.c_void_p * 2)(ctypes.cast(log, ctypes.c_void_p), ctypes.c_void_p(_LOG_BYTES))
        module = ctypes.c_void_p()
        result = self.lib.cuModuleLoadDataEx(ctypes.byref(module), ptx.encode() + b"\0", 2, options, values)
        self._check(result, "cuModuleLoadDataEx", log.value)
        return module

    def unload(self, module: ctypes.c_void_p) -> None:
        self._check(self.lib.cuModuleUnload(module), "cuModuleUnload")

    def function(self, module: ctypes.c_void_p, name: str, shared_mem: int = 0) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        self._check(self.lib.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()),
                    f"cuModuleGetFunction {name}")
        if shared_mem > STATIC_SHARED_LIMIT:
            self._check(self.lib.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared_mem),
                        "cuFuncSetAttribute")
        return fn

    def launch(self, fn: ctypes.c_void_p, grid: Sequence[int], block: Sequence[int], shared_mem: int, stream: int,
               params) -> None:
        """cuLaunchKernel with `params` from `pack_args`; `stream` a CUstream handle (torch's `.cuda_stream`)."""
        gx, gy, gz = (list(grid) + [1, 1])[:3]
        bx, by, bz = (list(block) + [1, 1])[:3]
        self._check(self.lib.cuLaunchKernel(fn, gx, gy, gz, bx, by, bz, shared_mem, ctypes.c_void_p(stream),
                                            params, None), "cuLaunchKernel")
