"""The AOT plugins' single-launch kernels: exact against the dumb references (triton's interpreter on CPU),
and PTX for sm_90 without a GPU. Each runs in a subprocess: the interpreter patches triton process-wide, and
compiled and interpreted kernels cannot share a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INTERPRETED = r"""
import json, sys, torch
from engines.plugin_kernels import TACTICS, expert_map_rows, expert_reduce_rows
from jetmoe.ops import expert_map_reference, expert_reduce_reference
out = []
# (T, K, E, N, D): one token, odd and prime sizes, k = 1 and 3, empty
for T, K, E, N, D in ((1, 2, 8, 16, 24), (5, 2, 4, 37, 29), (7, 3, 5, 11, 130), (3, 1, 2, 65, 9), (0, 2, 4, 8, 8)):
    g = torch.Generator().manual_seed(T * 100 + N)
    for dtype, index in ((torch.float32, torch.int64), (torch.float16, torch.int32), (torch.bfloat16, torch.int64)):
        x = torch.randn(T, D, generator=g).to(dtype)
        rows = [torch.randperm(E, generator=g)[:K] for _ in range(T)]
        idx = (torch.stack(rows) if rows else torch.zeros(0, K, dtype=torch.long)).to(index)
        unused = [e for e in range(E) if e not in set(idx.flatten().tolist())]
        w = (torch.randn(E, N, D, generator=g) / D ** 0.5).to(dtype)
        w[unused] = float("nan")  # unused experts are never read
        h = torch.randn(T, K, N, generator=g).to(dtype)
        gates = torch.rand(T, K, generator=g).to(dtype)
        w2 = (torch.randn(E, D, N, generator=g) / N ** 0.5).to(dtype)
        w2[unused] = float("nan")
        bias = torch.randn(D, generator=g).to(dtype)
        for tactic in TACTICS:
            y = expert_map_rows(x, idx, w, tactic)
            ref = expert_map_reference(x.float(), idx.long(), torch.nan_to_num(w.float()))
            z = expert_reduce_rows(h, idx, gates, w2, bias, tactic)
            ref2 = expert_reduce_reference(h.float(), idx.long(), gates.float(), torch.nan_to_num(w2.float()),
                                           bias.float())
            out.append(dict(case=[T, K, E, N, D], dtype=str(dtype), tactic=tactic, shape=list(y.shape),
                            shape2=list(z.shape),
                            map_err=(y.float() - ref).abs().max().item() if T else 0.0,
                            reduce_err=(z.float() - ref2).abs().max().item() if T else 0.0))
json.dump(out, sys.stdout)
"""

COMPILED = r"""
import json, sys
from engines.kernels.aot import entry_params
from engines.plugin_kernels import TACTICS, compile_ptx
out = {}
for op, declared in (("expert_map", 8), ("expert_reduce", 10)):
    for dtype in ("float32", "float16", "bfloat16"):
        for index in ("int32", "int64"):
            for tactic in TACTICS:
                k = compile_ptx(op, dtype, index, tactic, 90)
                out[f"{op}/{dtype}/{index}/{tactic}"] = dict(name=k.name, warps=k.num_warps, shared=k.shared_memory,
                    params=entry_params(k.ptx, k.name), declared=declared, sm90=".target sm_90" in k.ptx,
                    assembles="not checked: no ptxas")
# the stripped PTX still assembles (ptxas from triton's bundle, when present)
import os, shutil, subprocess, tempfile
from triton.backends.nvidia.compiler import get_ptxas
try:
    ptxas = get_ptxas(90).path
except Exception:
    ptxas = None
if ptxas:
    for key in list(out)[:4]:
        op, dtype, index, tactic = key.split("/")
        k = compile_ptx(op, dtype, index, int(tactic), 90)
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "k.ptx"); open(src, "w").write(k.ptx)
            done = subprocess.run([ptxas, "-arch=sm_90a", src, "-o", os.path.join(d, "k.cubin")],
                                  capture_output=True, text=True)
            out[key]["assembles"] = "ok" if done.returncode == 0 else done.stderr[-500:]
json.dump(out, sys.stdout)
"""

TOLERANCE = {"torch.float32": 1e-4, "torch.float16": 2e-2, "torch.bfloat16": 1e-1}


def _run(script: str, interpret: bool) -> object:
    pytest.importorskip("triton", reason="triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=False, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_row_kernels_match_the_references_interpreted():
    results = _run(INTERPRETED, interpret=True)
    worst = max(results, key=lambda r: max(r["map_err"], r["reduce_err"]) / TOLERANCE[r["dtype"]])
    print("worst case", worst)
    for r in results:
        T, K, _, N, D = r["case"]
        assert r["shape"] == [T, K, N] and r["shape2"] == [T, D]
        assert r["map_err"] <= TOLERANCE[r["dtype"]], r
        assert r["reduce_err"] <= TOLERANCE[r["dtype"]], r


def test_row_kernels_compile_to_sm90_ptx_without_a_gpu():
    results = _run(COMPILED, interpret=False)
    for key, k in results.items():
        op = key.split("/")[0]
        assert k["name"] == f"_{op}_rows_kernel" and k["sm90"], (key, k)
        # exactly what TensorRT passes: triton's two hidden scratch pointers are stripped
        assert k["params"] == k["declared"], (key, k)
        assert k["shared"] < 48 * 1024
        assert k["assembles"] in ("ok", "not checked: no ptxas"), (key, k["assembles"])
    assert sum(k["assembles"] == "ok" for k in results.values()) in (0, 4)
