"""The CPU-only parts of scripts/gpu_check.py: the plan (--dry-run), the table/JSON writers, the HF model it
builds from our state dict (meta device + assign) decoding like ours, the timing loop's L2 flush, and the AOT
section's packing of kernel arguments (checked by a stand-in driver that runs the interpreted kernel on the raw
pointers and ints it is given). No numbers are measured here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from jetmoe import JetMoeConfig, JetMoeForCausalLM
from jetmoe.random_weights import init_random_
from validate.timing import cuda_time

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_the_plan(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["kernels"] == [] and report["e2e"] is None
    plan = report["plan"]
    assert len(plan) == 16 and {c["T"] for c in plan} == {1, 4, 16, 2048}
    assert {(c["op"], c["N"]) for c in plan} == {("expert_map", 11264), ("expert_reduce", 5632),
                                                 ("expert_map", 2048), ("expert_reduce", 2048)}
    assert report["summary"]["all_correct"] is None and report["summary"]["meets"]["e2e_speedup_vs_hf"] is None
    aot = report["aot_plan"]
    assert len(aot) == 14 and {c["T"] for c in aot} == {1, 4, 16} and report["aot"] is None
    assert [(c["op"], c["index_dtype"]) for c in aot if c["out_of_range"]] == [("expert_map", "int32"),
                                                                               ("expert_reduce", "int32")]
    assert report["l2_flush_bytes"] == 256 << 20
    out = capsys.readouterr().out
    assert "nothing measured" in out and "expert_reduce" in out and "14 AOT cases" in out


def test_every_timed_call_follows_an_untimed_flush(gpu_check, monkeypatch):
    """The L2 flush (and `between`) run before the start event of each call, never inside the timed span."""
    trace = []

    class Event:
        def __init__(self):
            trace.append("new")

        def record(self):
            trace.append("record")

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 1.5

    class Flush:
        def zero_(self):
            trace.append("flush")

    monkeypatch.setattr(gpu_check, "l2_flush_buffer", Flush)
    monkeypatch.setattr(gpu_check, "cuda_time", lambda fn: cuda_time(fn, Event))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: trace.append("sync"))
    assert gpu_check.cuda_time_ms(lambda: trace.append("fn"), iters=3, warmup=2) == 1.5
    assert trace == ["sync"] + ["flush", "fn"] * 2 + ["flush", "new", "new", "record", "fn", "record"] * 3
    assert gpu_check.L2_FLUSH_BYTES > 50 * 2**20  # more than the H100/H200 L2


def test_tables_show_missing_values_as_dashes(gpu_check):
    rows = [dict(op="expert_map", block="moe", N=11264, T=1, ok=None)]
    lines = gpu_check.kernel_table(rows).splitlines()
    assert len(lines) == 3 and len(lines[2]) == len(lines[0]) and lines[2].split()[-1] == "-"
    text = gpu_check.e2e_table({"ours_triton_ms": None, "hf_ms": None})
    assert "HF transformers eager" in text and "-" in text.splitlines()[-1]


def test_no_gpu_is_a_clear_exit(gpu_check, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_hf_model_from_our_state_dict_decodes_like_ours(gpu_check, transformers):
    config = JetMoeConfig.from_preset("tiny")
    ours = JetMoeForCausalLM(config)
    init_random_(ours, 7)
    ours.eval()
    hf, notes = gpu_check.build_hf(ours, config, device="cpu")
    assert notes["built"] == "meta+assign" and not notes["missing_keys"] and not notes["unexpected_keys"], notes
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab_size, (1, 12), generator=gen)
    token = torch.randint(0, config.vocab_size, (1, 1), generator=gen)
    with torch.no_grad():
        ours_step = gpu_check.decode_step(ours, prompt, token)
        hf_step, restore = gpu_check.hf_decode_step(hf, prompt, token)
        a = ours_step().logits
        restore()
        b = hf_step().logits
        restore()
        c = hf_step().logits  # the restored cache gives the same step again
        assert torch.equal(ours_step().logits, a)
    print("max |ours - hf|", float((a - b).abs().max()))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.equal(b, c)


def test_run_case_checks_every_kernel_at_small_widths():
    """`run_case`'s correctness path (inputs, launcher, reference, byte/flop accounting) on CPU with the
    kernels interpreted and small widths; the timer is replaced by NaN, so no speed is measured or shown."""
    pytest.importorskip("triton", reason="needs triton (interpreted on CPU)")
    import os
    import subprocess
    import sys

    root = SCRIPT.parents[1]
    script = (
        "import importlib.util, math, torch\n"
        f"spec = importlib.util.spec_from_file_location('gpu_check', {str(SCRIPT)!r})\n"
        "g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)\n"
        "g.DEVICE, g.D_MODEL = 'cpu', 40\n"
        "g.cuda_time_ms = lambda fn, iters, warmup=0, between=None: (fn(), float('nan'))[1]\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "for T in (1, 4, 2048):\n"
        "    g.DECODE_T = (1, 4)\n"
        "    for op, N in (('expert_map', 24), ('expert_reduce', 12)):\n"
        "        case = dict(op=op, block='moe', N=N, T=T if T < 2048 else 40)\n"
        "        if T == 2048: g.DECODE_T = ()\n"
        "        r = g.run_case(case, 1, 1.0, 1.0, gen)\n"
        "        assert r['ok'] and r['max_err'] < 0.05, r\n"
        "        assert r['weight_bytes'] == r['experts_hit'] * N * 40 * 2, r\n"
        "        assert (r['bandwidth_fraction'] is None) == (T == 2048), r\n"
        "        print(op, T, r['max_err'], r['experts_hit'])\n"
        "print(g.kernel_table([r]))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)


AOT_SCRIPT = r"""
import ctypes, importlib.util, math, torch
from engines import plugin_kernels as pk
from engines.kernels.aot import AotKernel
from engines.plugins import PLUGINS
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)
g.DEVICE, g.D_MODEL = "cpu", 40
g.cuda_time_ms = lambda fn, iters, warmup=0, between=None, flush_l2=True: (fn(), float("nan"))[1]
DTYPES = {"int32": torch.int32, "int64": torch.int64}
launches = []

def view(address, shape, dtype):
    n = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    return torch.frombuffer((ctypes.c_byte * n).from_address(address), dtype=dtype).view(shape)

def driver_stand_in(kernel, grid, block, shared_mem, params):
    # sees only what cuLaunchKernel would: the raw argument array, grid, block, shared memory
    op = kernel.name[1:-len("_rows_kernel")]
    index_dtype, tactic = kernel.ptx.split(":")
    tiles, n_in = pk.TACTICS[int(tactic)], len(PLUGINS[op].inputs)
    addresses = [params[i] for i in range(pk.DECLARED_ARGS[op])]
    pointers = [ctypes.c_uint64.from_address(a).value for a in addresses[:n_in]]
    ints = [ctypes.c_int32.from_address(a).value for a in addresses[n_in:-1]]
    out = ctypes.c_uint64.from_address(addresses[-1]).value
    if op == "expert_map":
        R, K_, N, D, E_ = ints
        T = R // K_
        shapes = [(T, D), (T, K_), (E_, N, D)]
        out_shape = (T, K_, N)
    else:
        T, K_, N, D, E_ = ints
        shapes = [(T, K_, N), (T, K_), (T, K_), (E_, D, N), (D,)]
        out_shape = (T, D)
    tensors = [view(p, s, DTYPES[index_dtype] if i == 1 else torch.bfloat16) for i, (p, s) in
               enumerate(zip(pointers, shapes))]
    assert grid == (*pk.launch(op, shapes, int(tactic))[0], 1) and block == (32 * tiles.num_warps, 1, 1)
    tile = {"BLOCK_N" if op == "expert_map" else "BLOCK_D": tiles.block_n}
    pk.kernels()[op][grid[:2]](*tensors, *ints, view(out, out_shape, torch.bfloat16), BLOCK_K=tiles.block_k,
                               num_warps=tiles.num_warps, **tile)
    launches.append((op, int(tactic), ints))

gen = torch.Generator().manual_seed(0)
for case in (dict(op="expert_map", block="moe", N=24, T=4, index_dtype="int32", out_of_range=True),
             dict(op="expert_reduce", block="moe", N=12, T=4, index_dtype="int32", out_of_range=True),
             dict(op="expert_map", block="moa", N=20, T=1, index_dtype="int64", out_of_range=False),
             dict(op="expert_reduce", block="moa", N=20, T=3, index_dtype="int64", out_of_range=False)):
    kernels = {t: AotKernel(f"_{case['op']}_rows_kernel", f"{case['index_dtype']}:{t}", tiles.num_warps, 0)
               for t, tiles in pk.TACTICS.items()}
    r = g.run_aot_case(case, kernels, driver_stand_in, 1, 1.0, gen)
    assert r["ok"] and set(r["tactics"]) == set(pk.TACTICS), r
    assert all(t["ok"] and t["max_err"] < 0.05 for t in r["tactics"].values()), r
    print(case["op"], case["T"], case["out_of_range"], r["max_err"], r["weight_bytes"])
assert len(launches) == 2 * 4 * len(pk.TACTICS) and launches[0][2] == [8, 2, 24, 40, 8], launches[0]
print(g.aot_table([r]))  # 2 launches per tactic: the checked one, the (stubbed) timed one
"""


def test_aot_section_packs_arguments_as_qdp_launches_them():
    """run_aot_case end to end on CPU: a stand-in for cuLaunchKernel reads the packed argument array (pointers
    in, int32 extras, pointer out), rebuilds tensors from the raw addresses and runs the interpreted kernel; the
    results must match the references, out-of-range ids included (weights between NaN guard rows)."""
    pytest.importorskip("triton", reason="needs triton (interpreted on CPU)")
    import os
    import subprocess
    import sys

    root = SCRIPT.parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", f"SCRIPT = {str(SCRIPT)!r}\n" + AOT_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
