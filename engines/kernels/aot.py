"""Ahead-of-time compilation of the expert-dispatch kernels to PTX for a CUDA target, without a GPU.

For TensorRT Quickly Deployable Plugins: a plugin's `aot_impl` returns a kernel's name, its PTX, the launch
parameters (grid, block = 32 * num_warps threads, shared memory bytes) and the extra arguments.
`compile_kernel` gives the first of these for one kernel at one set of tiles; `compile_all` for every kernel.

Signature conventions (the same as the launchers in `dispatch.py`): data pointers have the activation type,
index pointers (`sorted_rows_ptr`, `block_expert_ptr`, `num_rows_padded_ptr`) int32, `expert_idx_ptr` int32
or int64, the reduce GEMM's output and the sum kernel's input fp32; every other runtime argument is i32.
Pointers are declared 16-byte aligned (TensorRT and torch allocations are 256-byte aligned). With
`aligned_widths=True` the row strides and widths are also declared multiples of 16 (true at JetMoe-8B widths:
D=2048, N=2048/5632/11264); such PTX must only be launched on shapes that satisfy it.

Triton 3.x kernels take two hidden trailing pointer parameters (global and profile scratch); a launcher of
the PTX passes them after the declared arguments (null where `global_scratch_size` is 0, checked here).

PTX ISA version: left alone, Triton writes the newest ISA its bundled ptxas knows (`.version 9.4` with Triton
3.9's CUDA 13.4 ptxas for arch >= 90), which a CUDA 12.x driver or ptxas refuses ("Unsupported .version 9.4";
CUDA 13.0's ptxas refuses it too). `compile_kernel` therefore asks Triton for `ptx_isa(arch)` (its CUDA
backend option `ptx_version`, honoured for every arch; LLVM gets `+ptx<min(v, 90)>`): ISA 8.0 (CUDA 12.0, the
oldest driver of every TensorRT >= 10.15 build: cu12/cu13 only; the cu11 wheels stop at 10.13), or the first
ISA that knows the target where that is newer (Triton targets `sm_90a` from arch 90 on). Below a target's
minimum, LLVM aborts the whole process ("PTX version 7.8 does not support target 'sm_90a'"), so such a
request is refused here first.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from jetmoe import dtypes

_INT32_PTRS = ("sorted_rows_ptr", "block_expert_ptr", "num_rows_padded_ptr")
_FP32_PTRS = {"_expert_reduce_gemm_kernel": ("out_ptr",), "_expert_reduce_sum_kernel": ("gated_ptr",)}
# strides of the contiguous (last) dimension: 1 for the contiguous tensors the launchers require
UNIT_STRIDES = {
    "_expert_map_kernel": ("stride_xd", "stride_wd", "stride_yn"),
    "_expert_reduce_gemm_kernel": ("stride_hn", "stride_gr", "stride_wn", "stride_od"),
    "_expert_reduce_sum_kernel": ("stride_gd", "stride_b", "stride_yd"),
}
_ALIGNED_INTS = ("stride_xt", "stride_we", "stride_wn", "stride_wd", "stride_yr", "stride_yt", "stride_hr",
                 "stride_or", "stride_gr", "N", "D")


# arch -> the oldest PTX ISA (major*10 + minor) that knows Triton's target for it (sm_90a, sm_100a, ...):
# PTX ISA release notes, and what LLVM in Triton 3.9 enforces (measured: 7.8 refused for sm_90a, 8.0 for
# sm_100a and sm_120a, 8.7 for sm_103a)
MIN_PTX_ISA = {80: 70, 86: 71, 87: 74, 89: 78, 90: 80, 100: 86, 101: 86, 103: 88, 120: 87, 121: 88}
BASELINE_PTX_ISA = 80  # CUDA 12.0: every driver that runs a TensorRT >= 10.15 (cu12 or cu13 build) takes it


def ptx_isa(arch: int) -> int:
    """The PTX ISA to emit for `sm_<arch>`: the baseline, or the target's minimum where that is newer."""
    if arch not in MIN_PTX_ISA:
        raise ValueError(f"no PTX ISA is known for sm_{arch} (known: {sorted(MIN_PTX_ISA)})")
    return max(BASELINE_PTX_ISA, MIN_PTX_ISA[arch])


def isa_text(isa: int) -> str:
    """80 -> "8.0" (the `.version` line's spelling)."""
    return f"{isa // 10}.{isa % 10}"


def ptx_header(ptx: str) -> dict[str, str]:
    """The `.version` and `.target` of PTX text: {"version": "8.0", "target": "sm_90a"}."""
    version = re.search(r"^\.version\s+(\d+\.\d+)", ptx, re.MULTILINE)
    target = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE)
    if version is None or target is None:
        raise ValueError("not PTX: no .version or .target line")
    return {"version": version.group(1), "target": target.group(1)}


class AotKernel(NamedTuple):
    name: str  # the PTX entry point
    ptx: str
    num_warps: int  # block = 32 * num_warps threads
    shared_memory: int  # dynamic shared memory bytes to launch with


def _jit_function(kernel):
    """The compilable JITFunction of a kernel, even when triton's interpreter wrapped it."""
    from triton.runtime.jit import JITFunction

    return kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn)


def signature_of(kernel, dtype: str, index_dtype: str = "int32", aligned_widths: bool = False,
                 unit_strides: bool = True) -> tuple[dict[str, str], dict, dict]:
    """Triton's `signature` (argument name -> type string), `attrs` (divisibility hints) and the extra
    constexprs (unit strides, which the PTX entry then does not take) for a kernel."""
    fn = _jit_function(kernel)
    elem = dtypes.float_dtype(dtype).triton
    signature, attrs, constants = {}, {}, {}
    units = UNIT_STRIDES.get(fn.__name__, ()) if unit_strides else ()
    for i, param in enumerate(fn.params):
        name = param.name
        if name in units:
            signature[name] = "constexpr"
            constants[name] = 1
        elif param.is_constexpr:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            if name in _INT32_PTRS:
                signature[name] = "*i32"
            elif name == "expert_idx_ptr":
                signature[name] = f"*{dtypes.dtype(index_dtype, dtypes.INDEXES).triton}"
            elif name in _FP32_PTRS.get(fn.__name__, ()):
                signature[name] = "*fp32"
            else:
                signature[name] = f"*{elem}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if aligned_widths and name in _ALIGNED_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs, constants


def compile_kernel(kernel, constexprs: dict, *, dtype: str = "bfloat16", index_dtype: str = "int32",
                   num_warps: int = 4, num_stages: int = 3, arch: int = 90, aligned_widths: bool = False,
                   unit_strides: bool = True, isa: int | None = None) -> AotKernel:
    """Compile one `@triton.jit` kernel for `sm_<arch>` (no GPU needed) and return its PTX and launch facts.

    `unit_strides`: the last-dimension strides (UNIT_STRIDES) are compiled in as 1 (contiguous inputs, as the
    launchers require; vectorised loads need it) and dropped from the entry's parameters.
    `isa`: PTX ISA as major*10 + minor (default `ptx_isa(arch)`); refused below the target's minimum."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if knobs.runtime.interpret:
        raise RuntimeError("AOT compilation needs a process where TRITON_INTERPRET is unset: the interpreter "
                           "patches triton.language for the whole process")
    isa = ptx_isa(arch) if isa is None else isa
    if isa < MIN_PTX_ISA.get(arch, 0):
        raise ValueError(f"PTX ISA {isa_text(isa)} does not know sm_{arch}'s target: it needs >= "
                         f"{isa_text(MIN_PTX_ISA[arch])}")
    fn = _jit_function(kernel)
    signature, attrs, units = signature_of(kernel, dtype, index_dtype, aligned_widths, unit_strides)
    constexprs = {**units, **constexprs}
    missing = [name for name, kind in signature.items() if kind == "constexpr" and name not in constexprs]
    if missing:
        raise ValueError(f"compile_kernel({fn.__name__}): constexprs missing {missing}")
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True, "ptx_version": isa}
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    scratch = getattr(compiled.metadata, "global_scratch_size", 0)
    if scratch:
        raise RuntimeError(f"{fn.__name__} needs {scratch} bytes of global scratch; not supported ahead of time")
    ptx = compiled.asm["ptx"]
    assert ptx_header(ptx)["version"] == isa_text(isa), (ptx_header(ptx), isa)
    return AotKernel(compiled.metadata.name, ptx, compiled.metadata.num_warps, compiled.metadata.shared)


def entry_points(ptx: str) -> list[str]:
    """The `.entry` names in PTX text."""
    return re.findall(r"\.entry\s+([A-Za-z_$][\w$]*)", ptx)


def entry_params(ptx: str, name: str) -> int:
    """How many parameters the PTX entry `name` declares (the kernel's runtime arguments + 2 scratch pointers)."""
    match = re.search(r"\.entry\s+" + re.escape(name) + r"\s*\((.*?)\)", ptx, re.DOTALL)
    return match.group(1).count(".param") if match else 0


def compile_all(dtype: str = "bfloat16", *, T: int = 1, E: int = 8, arch: int = 90, index_dtype: str = "int32",
                aligned_widths: bool = False, device_name: str | None = None) -> dict[str, AotKernel]:
    """Every kernel at the launch configuration `get_config` picks for T tokens: op name -> AotKernel."""

    from engines.kernels import _jit
    from engines.kernels.dispatch import _INPUT_PRECISION, _next_pow2
    from engines.kernels.launch_config import get_config

    precision = _INPUT_PRECISION[dtypes.float_dtype(dtype).torch]
    out = {}
    for op, kernel in (("expert_map", _jit._expert_map_kernel), ("expert_reduce", _jit._expert_reduce_gemm_kernel)):
        cfg = get_config(op, T, device_name=device_name)
        consts = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"],
                  "INPUT_PRECISION": precision, "DOT_IN_FP32": False}
        out[op] = compile_kernel(kernel, consts, dtype=dtype, num_warps=cfg["num_warps"],
                                 num_stages=cfg["num_stages"], arch=arch, aligned_widths=aligned_widths)
    cfg = get_config("expert_reduce_sum", T, device_name=device_name)
    out["expert_reduce_sum"] = compile_kernel(_jit._expert_reduce_sum_kernel, {"BLOCK_D": cfg["BLOCK_D"]},
                                              dtype=dtype, num_warps=cfg["num_warps"],
                                              num_stages=cfg["num_stages"], arch=arch, aligned_widths=aligned_widths)
    cfg = get_config("align", T * 2, device_name=device_name)
    block_m = get_config("expert_map", T, device_name=device_name)["BLOCK_M"]
    out["align"] = compile_kernel(_jit._align_kernel,
                                  {"BLOCK_M": block_m, "BLOCK_R": cfg["BLOCK_R"], "E_POW2": max(_next_pow2(E), 2)},
                                  dtype=dtype, index_dtype=index_dtype, num_warps=cfg["num_warps"],
                                  num_stages=cfg["num_stages"], arch=arch)
    return out
