"""Ahead-of-time compilation for sm_90 without a GPU: PTX with the kernel's entry point.

Runs in a subprocess without TRITON_INTERPRET: the interpreter (set for the other kernel tests in this
process) patches triton.language process-wide, and compiled and interpreted kernels cannot share a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need_triton

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = r"""
import json, sys
from engines.kernels import aot
out = {}
for T in (1, 2048):
    for op, k in aot.compile_all("bfloat16", T=T, aligned_widths=True).items():
        out[f"{op}@{T}"] = dict(name=k.name, ptx_bytes=len(k.ptx), num_warps=k.num_warps, shared=k.shared_memory,
                                entries=aot.entry_points(k.ptx), params=aot.entry_params(k.ptx, k.name),
                                target=".target sm_90a" in k.ptx, wgmma="wgmma" in k.ptx, mma="mma.sync" in k.ptx,
                                isa=aot.ptx_header(k.ptx)["version"])
k = aot.compile_kernel(aot._jit_function(__import__("engines.kernels._jit", fromlist=["x"])._expert_map_kernel),
                       {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "INPUT_PRECISION": "ieee", "DOT_IN_FP32": False},
                       dtype="float32", unit_strides=False)
out["expert_map_fp32_strided"] = dict(name=k.name, params=aot.entry_params(k.ptx, k.name))
json.dump(out, sys.stdout)
"""


def test_compile_all_for_sm90_without_gpu():
    need_triton()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    print(json.dumps(result, indent=1))
    kernels = {"expert_map": "_expert_map_kernel", "expert_reduce": "_expert_reduce_gemm_kernel",
               "expert_reduce_sum": "_expert_reduce_sum_kernel", "align": "_align_kernel"}
    # runtime arguments the PTX entry takes, + 2 hidden scratch pointers; unit strides are compiled in
    params = {"expert_map": 13 + 2, "expert_reduce": 13 + 2, "expert_reduce_sum": 7 + 2, "align": 8 + 2}
    for T in (1, 2048):
        for op, name in kernels.items():
            k = result[f"{op}@{T}"]
            assert k["name"] == name and k["entries"] == [name] and k["target"], k
            assert k["num_warps"] == 4 and k["ptx_bytes"] > 1000 and k["params"] == params[op], k
            assert k["isa"] == "8.0", k  # wgmma included: PTX ISA 8.0 is the first with sm_90a
    assert result["expert_map@1"]["mma"]  # BLOCK_M 16: mma.sync
    assert result["expert_map@2048"]["wgmma"] and result["expert_reduce@2048"]["wgmma"]  # BLOCK_M 64: Hopper wgmma
    assert result["expert_map@2048"]["shared"] > 0
    assert result["expert_map_fp32_strided"]["params"] == 16 + 2


def test_compile_refuses_interpreted_process():
    need_triton()
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("this process compiles kernels (TRITON_INTERPRET unset)")
    from engines.kernels import _jit, aot

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        aot.compile_kernel(_jit._expert_reduce_sum_kernel, {"BLOCK_D": 64})


def test_ptx_isa_policy():
    """ISA 8.0 (CUDA 12.0 drivers) where the target allows it; a target's own minimum where that is newer."""
    from engines.kernels import aot

    assert aot.ptx_isa(90) == 80 and aot.isa_text(aot.ptx_isa(90)) == "8.0"
    assert aot.ptx_isa(80) == 80 and aot.ptx_isa(89) == 80  # never below the baseline
    assert aot.ptx_isa(100) == 86 and aot.ptx_isa(120) == 87 and aot.ptx_isa(103) == 88
    with pytest.raises(ValueError, match="no PTX ISA is known for sm_75"):
        aot.ptx_isa(75)
    ptx = "//\n.version 8.0\n.target sm_90a\n.address_size 64\n"
    assert aot.ptx_header(ptx) == {"version": "8.0", "target": "sm_90a"}
    with pytest.raises(ValueError, match="not PTX"):
        aot.ptx_header("hello")
