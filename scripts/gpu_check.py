#!/usr/bin/env python
"""One-command GPU check of the Triton expert-dispatch kernels (engines/kernels/): correctness and speed.

    python scripts/gpu_check.py --out DIR            # on one CUDA GPU, < 8 minutes
    python scripts/gpu_check.py --out DIR --dry-run  # anywhere: the plan, no measurements

On one CUDA GPU it
  1. measures the GPU's device-to-device copy bandwidth (a large `copy_`, read + write bytes / time) and its
     bf16 matmul rate (a large `torch.matmul`, 2*n^3 / time);
  2. checks every kernel (map, reduce) against a reference on fresh random inputs at JetMoe-8B widths
     (D=2048, E=8, K=2, bf16; MoE map N=2*5632=11264 and reduce N=5632; MoA map and reduce N=2048), for
     T in 1, 4, 16 (decode) and 2048 (prefill). Reference: the dumb loop of `jetmoe.ops` in fp32 for decode
     sizes, the eager grouped op in fp32 for T=2048 (the loop would take minutes there);
  3. times each with CUDA events (median) against the torch eager ops (`jetmoe.ops`, CUDA kernel disabled),
     and reports for decode sizes the fraction of the copy bandwidth achieved on the weight bytes the call
     must read (distinct experts hit x N x D x 2 bytes), for T=2048 the fraction of the matmul rate;
  4. loads the TensorRT AOT plugin kernels' PTX (engines/plugin_kernels.py, bf16, every tactic) through the
     CUDA driver API exactly as TensorRT launches it (cuModuleLoadDataEx, cuLaunchKernel with grid, block,
     shared memory and int32 extra args from the same `plugin_kernels.launch` the plugin's aot_impl uses;
     engines/driver_launch.py), compares with the references at 8B widths for T in 1, 4, 16, including expert
     ids -1 and E (weights between NaN guard rows: a stray read shows), times each tactic, and records which
     PTX ISA versions the driver accepts;
  5. times an eager decode step (one token, batch 1, a 128-token cache) of `jetmoe.JetMoeForCausalLM` at
     8B widths with 4 layers (random weights) with our kernels, with the eager ops, and HF transformers'
     `JetMoeForCausalLM` on the same state dict.
Every timed call is preceded (untimed) by writing a 256 MiB buffer, more than the H100/H200's 50 MB L2, as
`triton.testing.do_bench` does: otherwise the 16 MiB of MoA decode weights stay in L2 between repetitions and
the "fraction of HBM bandwidth" is overstated.
It prints a table and writes DIR/gpu_check.json. Targets are reported, not asserted: decode-size calls
>= 60% of bandwidth, prefill-size >= 40% of matmul rate, end-to-end decode >= 3x HF eager. Exit 1 where a
kernel (grouped or AOT) is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from validate.timing import alternate, cuda_time, provenance, write_results

# JetMoe-8B widths
D_MODEL, MOE_I, MOA_N, E, K = 2048, 5632, 2048, 8, 2
DECODE_T = (1, 4, 16)
PREFILL_T = (2048,)
DEVICE = "cuda"
TARGETS = {"decode_bandwidth_fraction": 0.60, "prefill_matmul_fraction": 0.40, "e2e_speedup_vs_hf": 3.0}
# bf16 tolerances against an fp32 reference: one rounding of the output to bf16 (2^-8 relative) plus
# fp32 summation-order differences over D or N = 2048..11264 products.
ATOL, RTOL = 3e-2, 3e-2
L2_FLUSH_BYTES = 256 << 20  # written before each timed call: > 50 MB L2 (H100/H200), as triton.testing.do_bench
AOT_DECODE_T = (1, 4, 16)
PTX_VERSIONS_PROBED = ("8.0", "8.4", "8.8", "9.0", "9.4")  # the same PTX under each `.version`: which loads?


def cases() -> list[dict]:
    """Every kernel call the check makes: op, the block it stands for, N, T."""
    out = []
    for T in DECODE_T + PREFILL_T:
        out += [dict(op="expert_map", block="moe", N=2 * MOE_I, T=T),
                dict(op="expert_reduce", block="moe", N=MOE_I, T=T),
                dict(op="expert_map", block="moa", N=MOA_N, T=T),
                dict(op="expert_reduce", block="moa", N=MOA_N, T=T)]
    return out


def aot_cases() -> list[dict]:
    """The AOT driver-API calls: each op and block at decode sizes with ONNX's int64 ids, and an int32 case
    with expert ids -1 and E in it."""
    blocks = (("expert_map", "moe", 2 * MOE_I), ("expert_reduce", "moe", MOE_I), ("expert_map", "moa", MOA_N),
              ("expert_reduce", "moa", MOA_N))
    out = [dict(op=op, block=block, N=N, T=T, index_dtype="int64", out_of_range=False)
           for T in AOT_DECODE_T for op, block, N in blocks]
    out += [dict(op=op, block=block, N=N, T=4, index_dtype="int32", out_of_range=True)
            for op, block, N in blocks[:2]]
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json")
    p.add_argument("--dry-run", action="store_true", help="print and write the plan only; no GPU needed")
    p.add_argument("--layers", type=int, default=4, help="blocks of the end-to-end model (default 4)")
    p.add_argument("--cache", type=int, default=128, help="cached tokens before the timed decode step")
    p.add_argument("--iters", type=int, default=50, help="timed repetitions per kernel call (median reported)")
    p.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end decode timing")
    p.add_argument("--skip-aot", action="store_true", help="skip the AOT PTX check through the CUDA driver API")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ---- formatting (CPU-only, tested) -------------------------------------------------------------------------


def _fmt(value, spec: str) -> str:
    """format(value, spec), or '-' right-aligned to the spec's width when nothing was measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return format("-", f">{width or 1}")
    return format(value, spec)


def kernel_table(rows: list[dict]) -> str:
    head = (f"{'op':<14}{'block':<6}{'N':>6}{'T':>6}  {'ok':<3}{'max err':>9}  {'triton us':>10}{'eager us':>10}"
            f"{'speedup':>8}  {'GB/s':>7}{'% bw':>6}  {'TFLOP/s':>8}{'% mm':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = "-" if r.get("ok") is None else ("yes" if r["ok"] else "NO")
        lines.append(
            f"{r['op']:<14}{r['block']:<6}{r['N']:>6}{r['T']:>6}  {ok:<3}{_fmt(r.get('max_err'), '9.2e')}  "
            f"{_fmt(r.get('triton_us'), '10.1f')}{_fmt(r.get('eager_us'), '10.1f')}{_fmt(r.get('speedup'), '8.2f')}  "
            f"{_fmt(r.get('gbps'), '7.0f')}{_fmt(_pct(r.get('bandwidth_fraction')), '6.0f')}  "
            f"{_fmt(r.get('tflops'), '8.1f')}{_fmt(_pct(r.get('matmul_fraction')), '6.0f')}")
    return "\n".join(lines)


def _pct(x):
    return None if x is None else 100.0 * x


def e2e_table(e2e: dict) -> str:
    lines = [f"{'end-to-end decode step':<34}{'ms':>9}{'vs HF':>8}", "-" * 51]
    hf = e2e.get("hf_ms")
    for key, label in (("ours_triton_ms", "ours + Triton kernels"), ("ours_eager_ms", "ours, eager ops"),
                       ("hf_ms", "HF transformers eager")):
        ms = e2e.get(key)
        ratio = hf / ms if (ms and hf) else None
        lines.append(f"{label:<34}{_fmt(ms, '9.2f')}{_fmt(ratio, '8.2f')}")
    return "\n".join(lines)


def aot_table(rows: list[dict]) -> str:
    head = (f"{'AOT kernel':<14}{'block':<6}{'N':>6}{'T':>4}  {'idx':<6}{'oor':<4}{'ok':<4}{'max err':>9}  "
            f"{'best':>4}{'us':>8}{'% bw':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = "-" if r.get("ok") is None else ("yes" if r["ok"] else "NO")
        lines.append(f"{r['op']:<14}{r['block']:<6}{r['N']:>6}{r['T']:>4}  {r['index_dtype']:<6}"
                     f"{'yes' if r['out_of_range'] else 'no':<4}{ok:<4}{_fmt(r.get('max_err'), '9.2e')}  "
                     f"{_fmt(r.get('best_tactic'), '4d')}{_fmt(r.get('best_us'), '8.1f')}"
                     f"{_fmt(_pct(r.get('bandwidth_fraction')), '6.0f')}")
    return "\n".join(lines)


def summarize(rows: list[dict], e2e: dict | None, aot: list[dict] | None = None) -> dict:
    """Targets vs results; None where nothing was measured."""
    decode = [r["bandwidth_fraction"] for r in rows if r.get("bandwidth_fraction") is not None]
    prefill = [r["matmul_fraction"] for r in rows if r.get("matmul_fraction") is not None]
    speedup = e2e.get("speedup_vs_hf") if e2e else None
    checks = [r["ok"] for r in rows + (aot or []) if r.get("ok") is not None]
    aot_checks = [r["ok"] for r in aot or [] if r.get("ok") is not None]
    return {
        "all_correct": all(checks) if checks else None,
        "aot_correct": all(aot_checks) if aot_checks else None,
        "decode_bandwidth_fraction_min": min(decode) if decode else None,
        "prefill_matmul_fraction_min": min(prefill) if prefill else None,
        "e2e_speedup_vs_hf": speedup,
        "targets": TARGETS,
        "meets": {
            "decode_bandwidth_fraction": None if not decode else min(decode) >= TARGETS["decode_bandwidth_fraction"],
            "prefill_matmul_fraction": None if not prefill else min(prefill) >= TARGETS["prefill_matmul_fraction"],
            "e2e_speedup_vs_hf": None if speedup is None else speedup >= TARGETS["e2e_speedup_vs_hf"],
        },
    }


def write_report(out: Path, report: dict) -> Path:
    return write_results(out / "gpu_check.json", {"provenance": provenance(), **report})


# ---- measurement (GPU) -----------------------------------------------------------------------------------


_flush_buffer = []


def l2_flush_buffer():
    """One L2_FLUSH_BYTES device buffer per process, made on first use."""
    import torch

    if not _flush_buffer:
        _flush_buffer.append(torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda"))
    return _flush_buffer[0]


def cuda_time_ms(fn, iters: int, warmup: int = 5, between=None, flush_l2: bool = True) -> float:
    """Median milliseconds of fn() over `iters` runs, each timed with its own pair of CUDA events, from a cold
    L2 (`flush_l2`: a 256 MiB buffer is zeroed, untimed, before each call). `between()` (untimed) runs before
    each timed call too, e.g. to restore a cache."""
    import torch

    flush = l2_flush_buffer() if flush_l2 else None

    def before():
        if between:
            between()
        if flush is not None:
            flush.zero_()

    torch.cuda.synchronize()
    seconds = alternate({"fn": fn}, iters, warmup, before={"fn": before}, timer=cuda_time)["fn"]
    return 1e3 * statistics.median(seconds)


def measure_copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes/s of a device-to-device copy, counting read + write."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), iters=20)
    return 2 * nbytes / (ms * 1e-3)


def measure_matmul_rate(n: int = 8192) -> float:
    """FLOP/s of an n x n x n bf16 torch.matmul."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: torch.matmul(a, b), iters=20)
    return 2 * n**3 / (ms * 1e-3)


@contextlib.contextmanager
def eager_ops():
    """The `jetmoe::` ops' eager torch implementation even on CUDA (our Triton kernels disabled)."""
    from jetmoe import ops

    with ops.expert_map.set_kernel_enabled("cuda", False), ops.expert_reduce.set_kernel_enabled("cuda", False):
        yield


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_case_inputs(case: dict, gen):
    import torch

    T, N = case["T"], case["N"]
    dev, dt = DEVICE, torch.bfloat16
    idx = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]).to(dev)
    if case["op"] == "expert_map":
        x = torch.randn(T, D_MODEL, generator=gen).to(dev, dt)
        w = (torch.randn(E, N, D_MODEL, generator=gen) / D_MODEL**0.5).to(dev, dt)
        return (x, idx, w)
    h = torch.randn(T, K, N, generator=gen).to(dev, dt)
    gates = torch.softmax(torch.randn(T, K, generator=gen), -1).to(dev, dt)
    w = (torch.randn(E, D_MODEL, N, generator=gen) / N**0.5).to(dev, dt)
    bias = (0.02 * torch.randn(D_MODEL, generator=gen)).to(dev, dt)
    return (h, idx, gates, w, bias)


def run_case(case: dict, iters: int, bandwidth: float, matmul_rate: float, gen) -> dict:
    import torch

    from engines.kernels import dispatch
    from jetmoe import ops

    args = make_case_inputs(case, gen)
    op, T, N = case["op"], case["T"], case["N"]
    launcher = getattr(dispatch, op)
    eager = getattr(ops, op)
    y = launcher(*args)
    _sync()
    fp32 = [a.float() if a.is_floating_point() else a for a in args]
    with eager_ops():
        if T in DECODE_T:
            ref = getattr(ops, f"{op}_reference")(*fp32)
        else:
            ref = eager(*fp32)
        _sync()
        err = (y.float() - ref).abs()
        tol = ATOL + RTOL * ref.abs()
        ok = bool((err <= tol).all()) and bool(torch.isfinite(y).all())
        eager_ms = cuda_time_ms(lambda: eager(*args), iters=max(iters // 2, 10))
    triton_ms = cuda_time_ms(lambda: launcher(*args), iters=iters)
    row = dict(case, ok=ok, max_err=float(err.max()), triton_us=1e3 * triton_ms, eager_us=1e3 * eager_ms,
               speedup=eager_ms / triton_ms, gbps=None, bandwidth_fraction=None, tflops=None, matmul_fraction=None)
    idx = args[1]
    experts_hit = int(torch.unique(idx).numel())
    weight_bytes = experts_hit * N * D_MODEL * args[-1 if op == "expert_map" else 3].element_size()
    row["experts_hit"], row["weight_bytes"] = experts_hit, weight_bytes
    if T in DECODE_T:
        row["gbps"] = weight_bytes / (triton_ms * 1e-3) / 1e9
        row["bandwidth_fraction"] = weight_bytes / (triton_ms * 1e-3) / bandwidth
    else:
        flops = 2 * T * K * N * D_MODEL
        row["tflops"] = flops / (triton_ms * 1e-3) / 1e12
        row["matmul_fraction"] = flops / (triton_ms * 1e-3) / matmul_rate
    return row


# ---- AOT plugin kernels through the CUDA driver API (as TensorRT launches them) -------------------------


def make_aot_inputs(case: dict, gen):
    """Inputs of one AOT case, bf16 on DEVICE; the weight is the middle of E + 2 rows whose first and last are
    NaN, so a read of weight[-1] or weight[E] makes the output NaN. Out-of-range cases put -1 and E in the ids."""
    import torch

    T, N, dev, dt = case["T"], case["N"], DEVICE, torch.bfloat16
    idx = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
    if case["out_of_range"]:
        idx[0, 0], idx[-1, -1] = -1, E
    idx = idx.to(dev, getattr(torch, case["index_dtype"]))
    rows = (N, D_MODEL) if case["op"] == "expert_map" else (D_MODEL, N)
    guarded = torch.full((E + 2, *rows), float("nan"), dtype=dt, device=dev)
    guarded[1:E + 1] = (torch.randn(E, *rows, generator=gen) / rows[1]**0.5).to(dev, dt)
    w = guarded[1:E + 1]
    if case["op"] == "expert_map":
        return (torch.randn(T, D_MODEL, generator=gen).to(dev, dt), idx, w)
    h = torch.randn(T, K, N, generator=gen).to(dev, dt)
    gates = torch.softmax(torch.randn(T, K, generator=gen), -1).to(dev, dt)
    bias = (0.02 * torch.randn(D_MODEL, generator=gen)).to(dev, dt)
    return (h, idx, gates, w, bias)


def run_aot_case(case: dict, kernels: dict, launch, iters: int, bandwidth: float, gen) -> dict:
    """One AOT case with every tactic. `kernels`: tactic -> AotKernel (compiled PTX); `launch(kernel, grid,
    block, shared_mem, params)` launches it (the driver on a GPU). Grid and extra args come from
    `plugin_kernels.launch`, the arguments are packed as QDP orders them (inputs, int32 extras, outputs)."""
    import torch

    from engines.driver_launch import pack_args
    from engines.plugin_kernels import launch as launch_facts
    from jetmoe import ops

    op, T, N = case["op"], case["T"], case["N"]
    inputs = make_aot_inputs(case, gen)
    out_shape = (T, K, N) if op == "expert_map" else (T, D_MODEL)
    fp32 = [t.float() if t.is_floating_point() else t for t in inputs]
    ref = getattr(ops, f"{op}_reference")(*fp32)
    row = dict(case, tactics={}, ok=True, max_err=0.0)
    for tactic, kernel in sorted(kernels.items()):
        y = torch.full(out_shape, float("nan"), dtype=inputs[0].dtype, device=inputs[0].device)
        grid, ints = launch_facts(op, [t.shape for t in inputs], tactic)
        params, keep = pack_args([t.data_ptr() for t in inputs], ints, [y.data_ptr()])
        block = (32 * kernel.num_warps, 1, 1)

        def call(kernel=kernel, grid=grid, block=block, params=params):
            launch(kernel, (*grid, 1), block, kernel.shared_memory, params)

        call()
        _sync()
        err = (y.float() - ref).abs()
        ok = bool(torch.isfinite(y).all()) and bool((err <= ATOL + RTOL * ref.abs()).all())
        us = 1e3 * cuda_time_ms(call, iters)
        del keep
        row["tactics"][tactic] = dict(ok=ok, max_err=float(err.max()) if err.numel() else 0.0, us=us,
                                      grid=[*grid, 1], block=list(block), shared_mem=kernel.shared_memory)
        row["ok"] = row["ok"] and ok
        row["max_err"] = max(row["max_err"], row["tactics"][tactic]["max_err"])
    timed = {t: r["us"] for t, r in row["tactics"].items() if r["us"] == r["us"]}  # NaN where not measured
    row["best_tactic"] = min(timed, key=timed.get) if timed else None
    row["best_us"] = timed.get(row["best_tactic"]) if timed else None
    idx = inputs[1]
    hit = int(torch.unique(idx[(idx >= 0) & (idx < E)]).numel())
    row["weight_bytes"] = hit * N * D_MODEL * inputs[-1 if op == "expert_map" else 3].element_size()
    row["bandwidth_fraction"] = (row["weight_bytes"] / (row["best_us"] * 1e-6) / bandwidth
                                 if row["best_us"] else None)
    return row


def aot_driver_check(iters: int, bandwidth: float, seed: int) -> dict:
    """Section 4: driver version, which PTX ISA versions the driver loads, and every AOT case."""
    import torch

    from engines.driver_launch import Driver, DriverError, with_ptx_version
    from engines.plugin_kernels import TACTICS, compile_ptx

    torch.cuda.init()
    torch.empty(1, device="cuda")  # the primary context, current for the driver calls below
    driver = Driver()
    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    result = {"driver_version": driver.version(), "arch": arch, "ptx_versions": {}, "cases": []}
    sample = compile_ptx("expert_map", "bfloat16", "int64", 1, arch)
    for version in PTX_VERSIONS_PROBED:
        try:
            driver.unload(driver.load(with_ptx_version(sample.ptx, version)))
            result["ptx_versions"][version] = "loads"
        except DriverError as e:
            result["ptx_versions"][version] = str(e)[:300]
    functions = {}

    def launch(kernel, grid, block, shared_mem, params):
        key = (kernel.name, kernel.ptx)
        if key not in functions:
            functions[key] = driver.function(driver.load(kernel.ptx), kernel.name, shared_mem)
        driver.launch(functions[key], grid, block, shared_mem, torch.cuda.current_stream().cuda_stream, params)

    gen = torch.Generator().manual_seed(seed + 2)
    for case in aot_cases():
        kernels = {t: compile_ptx(case["op"], "bfloat16", case["index_dtype"], t, arch) for t in TACTICS}
        result["cases"].append(run_aot_case(case, kernels, launch, iters, bandwidth, gen))
        r = result["cases"][-1]
        print(f"  AOT {r['op']} {r['block']} N={r['N']} T={r['T']} {r['index_dtype']}"
              f"{' out-of-range ids' if r['out_of_range'] else ''}: ok={r['ok']} best tactic {r['best_tactic']} "
              f"{r['best_us']:.1f} us", flush=True)
    return result


def _fresh_rotary(hf, hf_config, device) -> None:
    """Rebuild RoPE modules on the GPU: their inv_freq is a non-persistent fp32 buffer, absent from a state
    dict (so left on the meta device by assign=True) and not to be cast to bf16."""
    import torch

    for name, module in list(hf.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):
            with torch.device(device):
                fresh = type(module)(config=hf_config)
            parent = hf.get_submodule(name.rsplit(".", 1)[0]) if "." in name else hf
            setattr(parent, name.rsplit(".", 1)[-1], fresh)


def build_hf(ours, config, device="cuda"):
    """HF transformers' JetMoeForCausalLM holding `ours`'s weights (module names are identical).
    Returns (model, notes): built on the meta device, then the state dict assigned (no copy)."""
    import torch
    import transformers

    hf_config = transformers.JetMoeConfig(**{k: v for k, v in config.to_dict().items()
                                             if k not in ("model_type", "id2label", "label2id", "dtype")})
    with torch.device("meta"):
        hf = transformers.JetMoeForCausalLM(hf_config)
    missing, unexpected = hf.load_state_dict(ours.state_dict(), assign=True, strict=True)
    notes = {"missing_keys": list(missing), "unexpected_keys": list(unexpected), "built": "meta+assign"}
    _fresh_rotary(hf, hf_config, device)
    if getattr(hf_config, "tie_word_embeddings", False):
        hf.lm_head.weight = hf.model.embed_tokens.weight
    left = [n for n, t in list(hf.named_parameters()) + list(hf.named_buffers()) if t.is_meta]
    if left:  # fall back: build on the GPU in bf16 and copy the weights in
        notes.update(built="device+copy", meta_left=left)
        with torch.device(device):
            hf = transformers.JetMoeForCausalLM(hf_config).to(next(ours.parameters()).dtype)
        hf.load_state_dict(ours.state_dict(), strict=True)
        _fresh_rotary(hf, hf_config, device)
    return hf.eval(), notes


def decode_step(ours, prompt, token):
    """A callable running one decode step of `token` after `prompt`'s cache (the same cache every call)."""
    from jetmoe import KVCache

    prefix = ours(prompt, use_cache=True).past_key_values.to_tuple()
    return lambda: ours(token, past_key_values=KVCache(prefix), use_cache=True)


def hf_decode_step(hf, prompt, token):
    """(step, restore) for HF: `restore()` (untimed) copies the prompt's cache, `step()` decodes `token` on it."""
    out = hf(prompt, use_cache=True)
    prefix = out.cache if hasattr(out, "cache") else out.past_key_values
    state = {}

    def restore():
        state["cache"] = copy.deepcopy(prefix)

    def step():
        return hf(token, cache=state["cache"], use_cache=True)

    return step, restore


def end_to_end(layers: int, cache_len: int, seed: int, iters: int = 20) -> dict:
    import torch

    from jetmoe import JetMoeConfig, JetMoeForCausalLM
    from jetmoe.random_weights import init_random_

    config = JetMoeConfig.from_preset("default", num_hidden_layers=layers)
    t0 = time.perf_counter()
    with torch.device("cuda"):  # torch's own init on the GPU (fast); init_random_ then copies CPU draws in
        ours = JetMoeForCausalLM(config)
    init_random_(ours, seed)
    ours = ours.to(torch.bfloat16).eval()
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(seed + 1)
    prompt = torch.randint(0, config.vocab_size, (1, cache_len), generator=gen).cuda()
    token = torch.randint(0, config.vocab_size, (1, 1), generator=gen).cuda()
    result = {"layers": layers, "cache": cache_len, "build_s": build_s}
    with torch.no_grad():
        ours_step = decode_step(ours, prompt, token)
        logits_triton = ours_step().logits.float()
        result["ours_triton_ms"] = cuda_time_ms(ours_step, iters)
        with eager_ops():
            logits_eager = ours_step().logits.float()
            result["ours_eager_ms"] = cuda_time_ms(ours_step, iters)
        result["max_abs_logit_diff_triton_vs_eager"] = float((logits_triton - logits_eager).abs().max())
        try:
            hf, result["hf_build"] = build_hf(ours, config)
            result["hf_attn_implementation"] = getattr(hf.config, "_attn_implementation", None)
            hf_step, restore = hf_decode_step(hf, prompt, token)
            restore()
            logits_hf = hf_step().logits.float()
            result["hf_ms"] = cuda_time_ms(hf_step, iters, between=restore)
            result["max_abs_logit_diff_triton_vs_hf"] = float((logits_triton - logits_hf).abs().max())
            result["speedup_vs_hf"] = result["hf_ms"] / result["ours_triton_ms"]
        except Exception as err:  # report, keep the rest of the results
            result["hf_error"] = f"{type(err).__name__}: {err}"
    result["speedup_vs_ours_eager"] = result["ours_eager_ms"] / result["ours_triton_ms"]
    return result


def environment() -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = cases()
    report = {"plan": plan, "widths": dict(D=D_MODEL, moe_I=MOE_I, moa_N=MOA_N, E=E, K=K, dtype="bfloat16"),
              "tolerance": dict(atol=ATOL, rtol=RTOL), "targets": TARGETS}
    report["aot_plan"] = aot_cases()
    report["l2_flush_bytes"] = L2_FLUSH_BYTES
    if args.dry_run:
        report.update(dry_run=True, environment=environment(), kernels=[], aot=None, e2e=None,
                      summary=summarize([], None))
        print(kernel_table([dict(c) for c in plan]))
        print(aot_table([dict(c) for c in report["aot_plan"]]))
        print(f"dry run: {len(plan)} kernel calls and {len(report['aot_plan'])} AOT cases planned; nothing measured")
        print("wrote", write_report(args.out, report))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (torch.cuda.is_available() is False); use --dry-run for the plan",
              file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: gpu_check times the compiled kernels", file=sys.stderr)
        return 2
    import engines.kernels

    if not engines.kernels.register_cuda_kernels():
        print("triton is not installed: pip install triton", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report.update(dry_run=False, environment=environment())
    bandwidth, matmul_rate = measure_copy_bandwidth(), measure_matmul_rate()
    report["calibration"] = {"copy_bandwidth_GBps": bandwidth / 1e9, "bf16_matmul_TFLOPs": matmul_rate / 1e12}
    print(f"{report['environment'].get('device')}: copy {bandwidth / 1e9:.0f} GB/s (read+write), "
          f"bf16 matmul {matmul_rate / 1e12:.0f} TFLOP/s")
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for case in plan:
        rows.append(run_case(case, args.iters, bandwidth, matmul_rate, gen))
        torch.cuda.empty_cache()
        r = rows[-1]
        print(f"  {r['op']} {r['block']} N={r['N']} T={r['T']}: ok={r['ok']} {r['triton_us']:.1f} us", flush=True)
    report["kernels"] = rows
    aot = None
    if not args.skip_aot:
        report["aot"] = aot_driver_check(args.iters, bandwidth, args.seed)
        aot = report["aot"]["cases"]
        torch.cuda.empty_cache()
    e2e = None
    if not args.skip_e2e:
        e2e = end_to_end(args.layers, args.cache, args.seed)
    report["e2e"] = e2e
    report["summary"] = summarize(rows, e2e, aot)
    report["seconds"] = time.perf_counter() - started
    print()
    print(kernel_table(rows))
    if aot:
        print()
        print(aot_table(aot))
        print(f"driver {report['aot']['driver_version']}: PTX versions loaded: "
              f"{[v for v, r in report['aot']['ptx_versions'].items() if r == 'loads']}")
    if e2e:
        print()
        print(e2e_table(e2e))
        if "hf_error" in e2e:
            print("HF:", e2e["hf_error"])
    print()
    print(json.dumps(report["summary"], indent=1))
    print("wrote", write_report(args.out, report))
    return 0 if report["summary"]["all_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
