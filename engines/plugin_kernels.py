"""Single-launch Triton kernels for the AOT plugins: one kernel per op, rows gathered by expert on load.

Why these exist beside `engines/kernels/` (the grouped-GEMM kernels): a Quickly Deployable Plugin's
`aot_impl` returns ONE kernel (name, PTX, launch params, int32 extra args) and gets no workspace. The grouped
GEMMs need an alignment kernel first (sorted_rows, block_expert: scratch buffers) and expert_reduce also a sum
kernel, so they cannot be an AOT plugin as they stand. These kernels need neither: a program computes one
(token, slot) row against its expert's weight tile (GEMV-like, fp32 accumulation), reading the expert id from
`expert_idx` itself. They are right for decode (few rows, memory-bound: each expert weight tile is read once
per row that uses it, which at T*K rows <= E is what the grouped GEMM reads too) and slow for long prefill
(the weight is re-read per row instead of per BLOCK_M rows). The JIT implementation (`@trtp.impl`) uses the
grouped GEMMs instead.

Argument order is QDP's AOT launch order: input pointers, int32 extra args, output pointers. Inputs must be
contiguous (TensorRT's LINEAR format). Key parameters (letters as docs/ops.md; R = T*K rows, r = t*K + j):
    map:    x [T, D], expert_idx [T, K] int32/int64, w [E, N, D] -> y [T, K, N];   extra args (R, K, N, D, E);
            grid (max(R, 1), cdiv(N, BLOCK_N))
    reduce: h [T, K, N], expert_idx [T, K], gates [T, K], w [E, D, N], bias [D] -> y [T, D];
            extra args (T, K, N, D, E); grid (max(T, 1), cdiv(D, BLOCK_D)); slots summed in slot order, then
            the bias, in fp32; one cast at the end
Programs past the last row (the grid is at least 1 so that T = 0 still launches) return at once. An expert id
outside [0, E) reads no memory and contributes zero (TensorRT times tactics on made-up inputs). `launch` is
the one statement of grid and extra args: the plugin's `aot_impl` evaluates it on shape expressions, the torch
launchers here and scripts/gpu_check.py on ints.

Triton (>= 3.3) appends two hidden pointer parameters (global and profile scratch) to every entry; TensorRT
launches an AOT kernel with exactly its inputs, extra args and outputs. `compile_ptx` removes those trailing
parameters from the PTX entry after checking the body never reads them (these kernels use no scratch), so the
entry's signature is exactly TensorRT's argument list; `ptxas` assembles the result (tested).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from jetmoe import dtypes
from jetmoe.fileio import atomic_directory, check_output
from jetmoe.log import progress
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, OPS

log = logging.getLogger(__name__)


class Tiles(NamedTuple):
    block_n: int  # BLOCK_N for map (tiles N), BLOCK_D for reduce (tiles D)
    block_k: int  # the reduction tile (D for map, N for reduce)
    num_warps: int


# tactic -> tiles; tactic 0 is TensorRT's default, the others are timed by the builder
TACTICS = {1: Tiles(64, 64, 4), 2: Tiles(128, 64, 4), 3: Tiles(32, 128, 2)}
DEFAULT_TACTIC = 1


def kernels():
    """op name -> @triton.jit kernel (imports triton on first use)."""
    from engines import _plugin_jit

    return {EXPERT_MAP.name: _plugin_jit._expert_map_rows_kernel,
            EXPERT_REDUCE.name: _plugin_jit._expert_reduce_rows_kernel}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def launch_dims(op: str, shapes: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The size letters of `op` (jetmoe/op_contract.py) from its input shapes (ints, or TensorRT shape
    expressions): each letter read where it first appears among the inputs."""
    return {letter: shapes[i][axis] for letter, (i, axis) in OPS[op].dim_sources().items()}


def launch(op: str, shapes: Sequence[Sequence[Any]], tactic: int, *, max_: Callable = max,
           cdiv: Callable = _cdiv) -> tuple[tuple[Any, Any], tuple[Any, ...]]:
    """((grid_x, grid_y), int32 extra args in kernel order) for one launch. `max_`/`cdiv` are the plugin's
    `trtp.max`/`trtp.cdiv` when the shapes are TensorRT shape expressions; block and shared memory come from
    the compiled kernel (32 * num_warps threads, `shared_memory` bytes)."""
    d, tiles = launch_dims(op, shapes), TACTICS[tactic]
    if op == EXPERT_MAP.name:
        rows = d["T"] * d["K"]
        return (max_(rows, 1), cdiv(d["N"], tiles.block_n)), (rows, d["K"], d["N"], d["D"], d["E"])
    return (max_(d["T"], 1), cdiv(d["D"], tiles.block_n)), (d["T"], d["K"], d["N"], d["D"], d["E"])


class _Sym(str):
    def __mul__(self, other):
        return _Sym(f"{self}*{other}")


def launch_formula(op: str, tactic: int) -> dict[str, Any]:
    """`launch` written out in the size letters (for people and the emitted index): grid and extra args."""
    shapes = [[_Sym(letter) for letter in spec.shape] for spec in OPS[op].inputs]
    grid, args = launch(op, shapes, tactic, max_=lambda a, b: f"max({a}, {b})", cdiv=lambda a, b: f"cdiv({a}, {b})")
    return {"grid": [*grid, 1], "extra_args": list(args)}


def expert_map_rows(x, expert_idx, weight, tactic: int = DEFAULT_TACTIC):
    """Launch the map kernel from torch (tests; TRITON_INTERPRET=1 runs it on CPU). Contiguous inputs."""
    import torch

    T, K = expert_idx.shape
    tiles = TACTICS[tactic]
    y = torch.empty(T, K, weight.shape[1], dtype=x.dtype, device=x.device)
    grid, args = launch(EXPERT_MAP.name, [x.shape, expert_idx.shape, weight.shape], tactic)
    kernels()[EXPERT_MAP.name][grid](x, expert_idx, weight, *args, y,
                                  BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps)
    return y


def expert_reduce_rows(h, expert_idx, gates, weight, bias, tactic: int = DEFAULT_TACTIC):
    """Launch the reduce kernel from torch (tests; TRITON_INTERPRET=1 runs it on CPU). Contiguous inputs."""
    import torch

    tiles = TACTICS[tactic]
    y = torch.empty(h.shape[0], weight.shape[1], dtype=h.dtype, device=h.device)
    grid, args = launch(EXPERT_REDUCE.name, [h.shape, expert_idx.shape, gates.shape, weight.shape, bias.shape], tactic)
    kernels()[EXPERT_REDUCE.name][grid](h, expert_idx, gates, weight, bias, *args, y,
                                     BLOCK_D=tiles.block_n, BLOCK_K=tiles.block_k, num_warps=tiles.num_warps)
    return y


DECLARED_ARGS = {EXPERT_MAP.name: 9, EXPERT_REDUCE.name: 11}  # pointers + int32 args, as TensorRT passes them


@functools.cache
def compile_ptx(op: str, dtype: str, index_dtype: str, tactic: int, arch: int, isa: int | None = None):
    """PTX for one op at one dtype/tactic (no GPU needed; not under TRITON_INTERPRET): an AotKernel whose
    entry takes exactly the arguments TensorRT passes (triton's unused scratch parameters removed), at PTX ISA
    `isa` (default `aot.ptx_isa(arch)`: 8.0 for sm_90)."""
    from engines.kernels.aot import compile_kernel

    tiles = TACTICS[tactic]
    tile_name = "BLOCK_N" if op == EXPERT_MAP.name else "BLOCK_D"
    kernel = compile_kernel(kernels()[op], {tile_name: tiles.block_n, "BLOCK_K": tiles.block_k}, dtype=dtype,
                            index_dtype=index_dtype, num_warps=tiles.num_warps, num_stages=1, arch=arch,
                            unit_strides=False, isa=isa)
    return kernel._replace(ptx=strip_unused_params(kernel.ptx, kernel.name, DECLARED_ARGS[op]))


INDEX_FILE = "index.json"


def emit_ptx(out_dir: str | os.PathLike, *, arch: int = 90, isa: int | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Write every AOT plugin kernel's PTX into the folder `out_dir` (all or nothing): one
    `<op>.<dtype>.<index dtype>.t<tactic>.ptx` per op, activation dtype (fp32/fp16/bf16), expert_idx dtype
    (int32/int64) and tactic, and `index.json` with each file's launch facts (entry name, parameters in launch
    order, num_warps, block, shared memory, PTX ISA, target, grid and extra args). Needs triton, in a process
    without TRITON_INTERPRET; neither TensorRT nor a GPU. Returns the index."""
    import triton

    from engines.kernels import aot

    out = check_output(out_dir, kind="dir", overwrite=overwrite, marker=INDEX_FILE)
    isa = aot.ptx_isa(arch) if isa is None else isa
    entries = []
    with atomic_directory(out) as tmp:
        for op, kernel in kernels().items():
            params = [p.name for p in aot._jit_function(kernel).params if not p.is_constexpr]
            combos = [(t, i, tactic) for t in dtypes.FLOATS for i in dtypes.INDEXES for tactic in sorted(TACTICS)]
            for float_type, index_type, tactic in progress(combos, f"compiling {op}", unit="kernel", logger=log):
                compiled = compile_ptx(op, float_type.name, index_type.name, tactic, arch, isa)
                name = f"{op}.{float_type.name}.{index_type.name}.t{tactic}.ptx"
                (tmp / name).write_text(compiled.ptx)
                header = aot.ptx_header(compiled.ptx)
                entries.append({
                    "file": name, "op": op, "dtype": float_type.name, "index_dtype": index_type.name,
                    "tactic": tactic, "kernel": compiled.name, "params": params, "num_warps": compiled.num_warps,
                    "block": [32 * compiled.num_warps, 1, 1], "shared_mem": compiled.shared_memory,
                    "ptx_isa": header["version"], "target": header["target"], "arch": arch,
                    "tiles": TACTICS[tactic]._asdict(), **launch_formula(op, tactic),
                    "sha256": hashlib.sha256(compiled.ptx.encode()).hexdigest(),
                })
        index = {"format": "jetmoe-trt aot ptx", "format_version": 1, "triton": triton.__version__, "arch": arch,
                 "ptx_isa": aot.isa_text(isa), "launch_order": "input pointers, int32 extra args, output pointers",
                 "out_of_range_expert": "reads no memory, contributes zero", "kernels": entries}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index


def strip_unused_params(ptx: str, name: str, keep: int) -> str:
    """Drop the entry's parameters after the first `keep` (triton's hidden global/profile scratch pointers).

    TensorRT launches an AOT kernel with exactly inputs + extra args + outputs; an entry declaring more
    parameters would read past its argument array. Refuses (ValueError) if the kernel body uses a dropped one.
    """
    match = re.search(r"(\.entry\s+" + re.escape(name) + r"\s*\()(.*?)(\))", ptx, re.DOTALL)
    if match is None:
        raise ValueError(f"no .entry {name} in the PTX")
    params = [p.strip() for p in match.group(2).split(",")]
    for param in params[keep:]:
        param_name = param.split()[-1]
        if re.search(r"\[" + re.escape(param_name) + r"\]", ptx):
            raise ValueError(f"{name} uses its parameter {param_name} (triton scratch memory): TensorRT does not "
                             f"pass it to AOT kernels")
    body = ",\n\t".join(params[:keep])
    return ptx[:match.start(2)] + "\n\t" + body + "\n" + ptx[match.end(2):]
