"""The AOT plugins' single-launch kernels: exact against the dumb references (triton's interpreter on CPU),
out-of-range expert ids read nothing and contribute zero, and PTX for sm_90 at ISA 8.0 without a GPU (every
kernel `jetmoe plugins --emit-ptx` writes, assembled by each ptxas found: triton's, the PATH's, and a CUDA 12.0
one where `nvidia-cuda-nvcc-cu12==12.0.*` is installed or JETMOE_OLD_PTXAS names one). Each runs in a
subprocess: the interpreter patches triton process-wide, and compiled and interpreted kernels cannot share a
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.plugin_kernels import TACTICS

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
# out-of-range expert ids (-1 and E, as in TensorRT's made-up timing inputs): the weight sits between two rows
# of NaN, so a read of weight[-1] or weight[E] shows as NaN; the reference gives such a slot zero
oor = []
T, K, E, N, D = 3, 2, 4, 37, 29
g = torch.Generator().manual_seed(5)
for index in (torch.int32, torch.int64):
    idx = torch.tensor([[-1, 2], [E, 0], [1, E]], dtype=index)
    x, h, gates = torch.randn(T, D, generator=g), torch.randn(T, K, N, generator=g), torch.rand(T, K, generator=g)
    guarded = torch.full((E + 2, N, D), float("nan"))
    guarded[1:E + 1] = torch.randn(E, N, D, generator=g) / D ** 0.5
    guarded2 = torch.full((E + 2, D, N), float("nan"))
    guarded2[1:E + 1] = torch.randn(E, D, N, generator=g) / N ** 0.5
    w, w2, bias = guarded[1:E + 1], guarded2[1:E + 1], torch.randn(D, generator=g)
    for tactic in TACTICS:
        y = expert_map_rows(x, idx, w, tactic)
        z = expert_reduce_rows(h, idx, gates, w2, bias, tactic)
        oor.append(dict(index=str(index), tactic=tactic, zero_rows=[bool(y[t, j].eq(0).all()) for t, j in
                                                                       ((0, 0), (1, 0), (2, 1))],
                        map_err=(y - expert_map_reference(x, idx.long(), w)).abs().max().item(),
                        reduce_err=(z - expert_reduce_reference(h, idx.long(), gates, w2, bias)).abs().max().item()))
json.dump(dict(cases=out, out_of_range=oor), sys.stdout)
"""

COMPILED = r"""
import glob, importlib.util, json, os, shutil, subprocess, sys, tempfile, types
from triton.backends.nvidia.compiler import get_ptx_version_from_options, get_ptxas
from engines.kernels import aot
from engines.plugin_kernels import DECLARED_ARGS, emit_ptx, kernels

def old_ptxas():
    if os.environ.get("JETMOE_OLD_PTXAS"):
        return os.environ["JETMOE_OLD_PTXAS"]
    spec = importlib.util.find_spec("nvidia.cuda_nvcc") if importlib.util.find_spec("nvidia") else None
    found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "bin", "ptxas")) if spec else []
    return found[0] if found else None

# the oldest first: it assembles every kernel, the others a sample (triton's own >= sm_90 one already
# assembled each kernel once while compiling it, before the scratch parameters were stripped)
assemblers = {"CUDA 12.0": old_ptxas(), "triton < sm_90": get_ptxas(80).path, "PATH": shutil.which("ptxas"),
              "triton >= sm_90": get_ptxas(90).path}
out = {"ptxas": {}, "kernels": {}}
with tempfile.TemporaryDirectory() as parent:
    d = os.path.join(parent, "ptx")
    index = emit_ptx(d)  # every op x dtype x index dtype x tactic, at the default ISA
    out["index"] = {k: v for k, v in index.items() if k != "kernels"}
    out["files"] = sorted(os.listdir(d))
    for k in index["kernels"]:
        ptx = open(os.path.join(d, k["file"])).read()
        out["kernels"][k["file"]] = dict(k, header=aot.ptx_header(ptx), declared=DECLARED_ARGS[k["op"]], assembles={},
                                         params_in_ptx=aot.entry_params(ptx, k["kernel"]))
    for name, path in assemblers.items():
        if not path:
            continue
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
        out["ptxas"][name] = version
        for k in index["kernels"] if len(out["ptxas"]) == 1 else index["kernels"][::9]:
            done = subprocess.run([path, "-arch=sm_90a", os.path.join(d, k["file"]), "-o", os.path.join(d, "k.cubin")],
                                  capture_output=True, text=True)
            out["kernels"][k["file"]]["assembles"][name] = "ok" if done.returncode == 0 else done.stderr[-300:]
# what Triton writes by default for sm_90 (the ISA of the base commit's PTX)
out["triton_default_isa"] = aot.isa_text(get_ptx_version_from_options(types.SimpleNamespace(ptx_version=None), 90))
try:  # below the target's minimum LLVM would abort the process: refused first
    aot.compile_kernel(kernels()["expert_map"], {"BLOCK_N": 64, "BLOCK_K": 64}, arch=90, isa=78, unit_strides=False)
    out["isa78"] = "compiled"
except ValueError as e:
    out["isa78"] = str(e)
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


@pytest.fixture(scope="module")
def interpreted():
    return _run(INTERPRETED, interpret=True)


def test_row_kernels_match_the_references_interpreted(interpreted):
    cases = interpreted["cases"]
    worst = max(cases, key=lambda r: max(r["map_err"], r["reduce_err"]) / TOLERANCE[r["dtype"]])
    print("worst case", worst)
    for r in cases:
        T, K, _, N, D = r["case"]
        assert r["shape"] == [T, K, N] and r["shape2"] == [T, D]
        assert r["map_err"] <= TOLERANCE[r["dtype"]], r
        assert r["reduce_err"] <= TOLERANCE[r["dtype"]], r


def test_out_of_range_expert_ids_read_nothing_and_contribute_zero(interpreted):
    """Ids -1 and E next to NaN guard rows: a kernel that reads weight[-1] or weight[E] (the base commit's did)
    gives NaN here; ours gives exact zero rows (map) and the reference's sum without the slot (reduce)."""
    results = interpreted["out_of_range"]
    assert len(results) == 2 * len(TACTICS)
    for r in results:
        print(r)
        assert r["zero_rows"] == [True, True, True], r
        assert r["map_err"] <= 1e-5 and r["reduce_err"] <= 1e-5, r


def test_row_kernels_compile_to_sm90_ptx_isa_8_without_a_gpu():
    results = _run(COMPILED, interpret=False)
    print(json.dumps(results["ptxas"], indent=1), results["triton_default_isa"])
    kernels = results["kernels"]
    assert len(kernels) == 2 * 3 * 2 * len(TACTICS) and results["files"] == sorted([*kernels, "index.json"])
    assert results["index"]["ptx_isa"] == "8.0" and results["index"]["arch"] == 90
    for name, k in kernels.items():
        op, dtype, index, tactic = name.split(".")[:4]
        assert (k["op"], k["dtype"], k["index_dtype"], f"t{k['tactic']}") == (op, dtype, index, tactic), k
        assert k["kernel"] == f"_{op}_rows_kernel", k
        assert k["header"] == {"version": "8.0", "target": "sm_90a"} and k["ptx_isa"] == "8.0", k
        # exactly what TensorRT passes: inputs, 5 int32 args (the last one E), outputs; no scratch pointers
        assert k["params_in_ptx"] == k["declared"] == len(k["params"]), k
        assert k["params"][k["declared"] - 2] == "E" and k["extra_args"][-1] == "E", k
        assert k["block"] == [32 * k["num_warps"], 1, 1] and k["shared_mem"] < 48 * 1024, k
        assert k["assembles"] and all(v == "ok" for v in k["assembles"].values()), (name, k["assembles"])
    assert {"triton >= sm_90", "triton < sm_90"} <= set(results["ptxas"])  # at least triton's own, 12.9 and 13.x
    assert results["triton_default_isa"] != "8.0"  # left alone, Triton writes a newer ISA (9.4 with Triton 3.9)
    assert "does not know sm_90's target: it needs >= 8.0" in results["isa78"]
