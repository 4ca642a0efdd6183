"""ONNX export cost and ONNX Runtime CPU latency: our export vs HF eager and HF transformers' own ONNX exporter.

At 8B widths with 2 layers, on random weights written once (`write_random_checkpoint`) to a work folder:

(a) export: `jetmoe export CKPT -o OUT --dtype fp32` and `--dtype bf16`, each in a fresh process under
    `/usr/bin/time -v`: wall time, "Maximum resident set size", and peak RSS / weight bytes in that dtype
    (target <= 1.5). The RSS of a process that only imports the exporter's modules is reported alongside.
(b) latency, batch 1, fp32, 2 threads, one process: a decode step on P=128 cached tokens (the prefix cache is
    built once and reused by every step) and a prefill of S=128 tokens, for
      ours     our fp32 export in ONNX Runtime CPU through `export.onnx_runtime.OnnxrtRunner` (threads=2)
      hf       HF eager `transformers.JetMoeForCausalLM.from_pretrained(CKPT, dtype=float32)` (default attention)
      hf_onnx  HF's `transformers.exporters.OnnxExporter().export_for_generation(...)` (exported in a fresh
               process from the same checkpoint), prefill.onnx and decode.onnx in ONNX Runtime CPU, 2 threads
    Logits are checked against HF eager first, and the same prefill is run 8 times through each ONNX model to
    check that it is deterministic. HF's graph is not at 2 threads (it is at 1): its index_add becomes
    ScatterND(reduction="add") with duplicate indices, which ORT's CPU kernel runs in parallel without
    synchronisation (microsoft/onnxruntime#18048), so its mismatches are reported, not fatal. Then the three run
    alternately in one loop (validate/timing.py) after warm-up, and the medians and our ratio to each are
    reported (target: our decode step faster than both).
    Each timed call starts after an untimed 0.1 s pause (ORT's threads spin ~40-50 ms after a run and would
    otherwise slow whatever runs next) and the order rotates every repetition.
    Session creation time and RSS growth are reported per ORT model. As a diagnostic of interference between
    the runtimes' thread pools (2 cores, each runtime spins its own threads), each side is then also timed
    alone, back to back (`blocks_diagnostic`); the alternating medians are the result. The machine is shared:
    before each timed case the script waits (up to --wait-quiet seconds) for a window in which other processes
    use < 0.3 cores, and it records how many cores they kept busy during the timing.
(c) with --profile: ORT's profiler on the decode step of ours and of hf_onnx; time per op type and top nodes.

    python benchmarks/bench_onnx.py                 # full run (~15 min, ~14 GB disk), writes docs/bench/onnx.json
    python benchmarks/bench_onnx.py --profile       # also profile the decode step of both ONNX models
    python benchmarks/bench_onnx.py --quick         # smoke run: tiny preset, few reps
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from validate.timing import (
    GiB,
    Growth,
    add_harness_arguments,
    alternate,
    cpu_snapshot,
    others_cores,
    paired_ratio,
    proc_status,
    provenance,
    run_measured,
    wait_quiet,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "bench" / "onnx.json"
S = P = 128
THREADS = 2
RSS_TARGET = 1.5
PARITY_TOL = 1e-3  # absolute on logits; the random weights give logits of magnitude ~1-10 (printed alongside)
CONFIGS = {
    "8b-widths-2l": {"vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 2, "num_key_value_heads": 16,
                     "kv_channels": 128, "intermediate_size": 5632},
    "tiny": "tiny",
}
DEFAULT_REPS = {"decode": 40, "prefill": 10}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# ONNX Runtime's worker threads spin ~40-50 ms of one core after every run (allow_spinning defaults to on): on
# 2 cores, whatever runs next loses half the machine. An untimed pause before each timed call keeps every
# runtime at its defaults while stopping that cross-talk.
COOLDOWN_S = 0.1


# ---- helpers -----------------------------------------------------------------------------------------------


def make_config(name: str):
    from jetmoe import JetMoeConfig

    spec = CONFIGS[name]
    return JetMoeConfig.from_preset(spec) if isinstance(spec, str) else JetMoeConfig(**spec)


def checkpoint_numel(ckpt: Path) -> int:
    """Number of weight elements in the checkpoint, from the safetensors headers (no tensor is read)."""
    total = 0
    for path in sorted(ckpt.glob("*.safetensors")):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        total += sum(int(np.prod(v["shape"], dtype=np.int64)) for k, v in header.items() if k != "__metadata__")
    return total


# ---- fresh processes: writing the checkpoint, HF's export ------------------------------------------------------


def write_checkpoint(ckpt: Path, config) -> None:
    """Random weights (seed 0), written by a fresh process so that its model does not stay in this one."""
    code = ("import json, sys; from jetmoe import JetMoeConfig; from jetmoe.random_weights import "
            "write_random_checkpoint; write_random_checkpoint(sys.argv[1], JetMoeConfig.from_dict("
            "json.loads(sys.argv[2])), seed=0)")
    subprocess.run([sys.executable, "-c", code, str(ckpt), json.dumps(config.to_dict())], check=True)


def _hf_export(ckpt: str, out: str) -> None:
    import transformers
    from transformers.exporters import OnnxConfig, OnnxExporter

    torch.set_num_threads(THREADS)
    model = transformers.JetMoeForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = torch.randint(model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    exported = OnnxExporter().export_for_generation(
        model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, OnnxConfig(dynamic=True),
        multi_token_decode=True)
    t1 = time.perf_counter()
    exported.save_pretrained(out)
    print(json.dumps({"export_s": t1 - t0, "save_s": time.perf_counter() - t1}))


# ---- the three runtimes ----------------------------------------------------------------------------------------


def ort_session(path: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class HfOnnx:
    """HF's exported prefill.onnx (input_ids, position_ids -> logits, cache.*) and decode.onnx
    (input_ids, position_ids, input.cache.* -> logits, output.cache.*), cache kept in OrtValues."""

    def __init__(self, folder: Path, load_prefill: bool = True, profile_prefix: str | None = None) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.creation = {}
        self.prefill_session = None
        if load_prefill:
            with Growth() as g:
                self.prefill_session = ort_session(folder / "prefill.onnx")
            self.creation["prefill.onnx"] = g.result
        with Growth() as g:
            self.decode_session = ort_session(folder / "decode.onnx", profile_prefix)
        self.creation["decode.onnx"] = g.result
        self.decode_inputs = [i.name for i in self.decode_session.get_inputs()]
        self.decode_outputs = [o.name for o in self.decode_session.get_outputs()]
        self.cache_in = [n for n in self.decode_inputs if "cache" in n]
        self.cache_out = [n for n in self.decode_outputs if "cache" in n]

        def key(name: str) -> tuple[str, ...]:
            return re.search(r"layers\.(\d+)\.(keys|values)$", name).groups()

        assert [key(n) for n in self.cache_in] == [key(n) for n in self.cache_out], (self.cache_in, self.cache_out)
        if self.prefill_session is not None:
            self.prefill_outputs = [o.name for o in self.prefill_session.get_outputs()]
            prefill_cache = [n for n in self.prefill_outputs if "cache" in n]
            assert [key(n) for n in prefill_cache] == [key(n) for n in self.cache_in], prefill_cache

    def io(self) -> dict:
        out = {"decode_inputs": self.decode_inputs, "decode_outputs": self.decode_outputs}
        if self.prefill_session is not None:
            out["prefill_inputs"] = [i.name for i in self.prefill_session.get_inputs()]
            out["prefill_outputs"] = self.prefill_outputs
        return out

    def _ids(self, ids: torch.Tensor, positions: torch.Tensor):
        v = self.ort.OrtValue.ortvalue_from_numpy
        return {"input_ids": v(ids.numpy().astype(np.int64)), "position_ids": v(positions.numpy().astype(np.int64))}

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor):
        values = self.prefill_session.run_with_ort_values(self.prefill_outputs, self._ids(ids, positions))
        return torch.from_numpy(values[0].numpy()[:, -1]).float(), list(values[1:])

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, cache: list):
        feeds = self._ids(ids, positions)
        feeds.update(zip(self.cache_in, cache, strict=True))
        values = self.decode_session.run_with_ort_values(["logits", *self.cache_out], feeds)
        return torch.from_numpy(values[0].numpy()[:, -1]).float(), list(values[1:])


def repeatability(ours, hf, hf_onnx, prefill_feeds: dict, runs: int) -> dict:
    """The same prefill `runs` times through each ONNX model: all outputs (logits at every position, KV cache)
    compared bitwise with the first run, and the logits at every position with HF eager's."""
    reference = hf(prefill_feeds["input_ids"], use_cache=False).logits[0].float().numpy()
    models = {"ours": lambda: [t.numpy() for t in ours.infer(prefill_feeds).values()]}  # logits first
    if hf_onnx is not None:
        hf_feeds = {k: prefill_feeds[k].numpy() for k in ("input_ids", "position_ids")}
        models["hf_onnx"] = lambda: hf_onnx.prefill_session.run(None, hf_feeds)  # logits first, then the cache
    out = {}
    for name, run in models.items():
        first = run()
        differing, vs_first, vs_eager = 0, 0.0, float(np.abs(first[0][0] - reference).max())
        for _ in range(runs - 1):
            outputs = run()
            if any(not np.array_equal(a, b) for a, b in zip(outputs, first, strict=True)):
                differing += 1
            vs_first = max(vs_first, *(float(np.abs(a - b).max()) for a, b in zip(outputs, first, strict=True)))
            vs_eager = max(vs_eager, float(np.abs(outputs[0][0] - reference).max()))
        out[name] = {"runs": runs, "runs_differing_from_first": differing, "max_abs_output_diff_vs_first_run": vs_first,
                     "max_abs_all_logits_diff_vs_hf_eager": vs_eager}
    return out


# ---- phases ----------------------------------------------------------------------------------------------------


def phase_export(work: Path, ckpt: Path, dtypes: list[str], numel: int) -> dict:
    results = {}
    baseline = run_measured([sys.executable, "-c", "import export.exporter, onnxscript, torch.onnx"],
                            work / "baseline.log")
    results["import_baseline"] = baseline
    print(f"\n(a) export, fresh process each, /usr/bin/time -v; weights {numel / 1e6:.1f} M params; "
          f"import-only process peak {baseline['max_rss_gib']:.2f} GiB", flush=True)
    for dtype in dtypes:
        out = work / f"ours_{dtype}"
        shutil.rmtree(out, ignore_errors=True)
        r = run_measured(["jetmoe", "export", str(ckpt), "-o", str(out), "--dtype", dtype],
                         work / f"export_{dtype}.log")
        weight_bytes = numel * DTYPE_BYTES[dtype]
        r.update({"dtype": dtype, "weight_bytes": weight_bytes,
                  "data_file_bytes": (out / "model.onnx.data").stat().st_size if r["returncode"] == 0 else None})
        if r["max_rss_gib"] is not None:
            r["peak_rss_over_weights"] = r["max_rss_gib"] * GiB / weight_bytes
            r["peak_rss_minus_import_baseline_over_weights"] = \
                (r["max_rss_gib"] - baseline["max_rss_gib"]) * GiB / weight_bytes
            r["meets_target"] = r["peak_rss_over_weights"] <= RSS_TARGET
        results[dtype] = r
        if r["returncode"]:
            print(f"  {dtype}: FAILED (exit {r['returncode']}):\n{r['stderr_tail']}", flush=True)
        else:
            print(f"  {dtype}: {r['seconds']:6.1f} s, peak RSS {r['max_rss_gib']:.2f} GiB, weights "
                  f"{weight_bytes / GiB:.2f} GiB -> ratio {r['peak_rss_over_weights']:.2f} (target <= {RSS_TARGET}; "
                  f"{r['peak_rss_minus_import_baseline_over_weights']:.2f} above the import baseline)", flush=True)
    return results


def phase_hf_export(work: Path, ckpt: Path, numel: int) -> dict:
    out = work / "hf_onnx"
    shutil.rmtree(out, ignore_errors=True)
    # this file through runpy (its main() does not run): its imports come from the installed packages
    code = f"import runpy; runpy.run_path({__file__!r})['_hf_export']({str(ckpt)!r}, {str(out)!r})"
    r = run_measured([sys.executable, "-c", code], work / "hf_export.log")
    if r["returncode"] == 0:
        log = (work / "hf_export.log").read_text().split("----- stderr -----")[0]
        r.update(json.loads([line for line in log.splitlines() if line.startswith("{")][-1]))
        r["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
        r["peak_rss_over_weights"] = r["max_rss_gib"] * GiB / (numel * 4)
        print(f"\nHF OnnxExporter.export_for_generation (fresh process): {r['seconds']:.1f} s in all "
              f"(export {r['export_s']:.1f} s, save {r['save_s']:.1f} s), peak RSS {r['max_rss_gib']:.2f} GiB "
              f"({r['peak_rss_over_weights']:.2f} x fp32 weights)", flush=True)
    else:
        print(f"\nHF OnnxExporter FAILED (exit {r['returncode']}):\n{r['stderr_tail']}", flush=True)
    return r


def ours_feeds(ours, config) -> tuple[dict, dict]:
    """Our prefill feeds (S prompt tokens, empty cache) and decode feeds (one token on the prompt's P cached tokens,
    from one prefill run here: a runner never changes a cache it returned, so every timed step reuses it)."""
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(config.vocab_size, (1, S), generator=gen)
    step = torch.randint(config.vocab_size, (1, 1), generator=gen)
    prefill = {"input_ids": prompt, "attention_mask": torch.ones(1, S, dtype=torch.long),
               "position_ids": torch.arange(S)[None], **ours.empty_past(1)}
    decode = {"input_ids": step, "attention_mask": torch.ones(1, P + 1, dtype=torch.long),
              "position_ids": torch.tensor([[P]]), **ours.carry_past(ours.infer(prefill))}
    return prefill, decode


def phase_latency(ckpt: Path, ours_path: Path, hf_dir: Path | None, config, quick: bool, reps_arg,
                  quiet_s: float) -> dict:
    import transformers

    from export.onnx_runtime import OnnxrtRunner

    result = {"creation": {}}
    with Growth() as g:
        hf = transformers.JetMoeForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    result["creation"]["hf_eager_from_pretrained"] = g.result
    result["hf_attn_implementation"] = hf.config._attn_implementation
    ours = OnnxrtRunner(ours_path, provider="cpu", threads=THREADS)
    with Growth() as g:
        ours.activate()  # the session is created here; `with ours` below releases it
    result["creation"]["ours"] = g.result
    hf_onnx = None
    if hf_dir is not None:
        hf_onnx = HfOnnx(hf_dir)
        result["creation"].update({f"hf_onnx_{k}": v for k, v in hf_onnx.creation.items()})
        result["hf_onnx_io"] = hf_onnx.io()
    print("\nloading (this process): " + ", ".join(
        f"{k} {v['seconds']:.1f} s RSS +{v['rss_growth_gib']:.2f} GiB (peak +{v['peak_growth_gib'] or 0:.2f})"
        for k, v in result["creation"].items()), flush=True)

    cases = {}
    with ours, torch.inference_mode():
        prefill, decode = ours_feeds(ours, config)
        prompt, prompt_pos = prefill["input_ids"], prefill["position_ids"]
        step, step_pos = decode["input_ids"], decode["position_ids"]
        result["repeatability"] = repeatability(ours, hf, hf_onnx, prefill, runs=2 if quick else 8)
        for name, r in result["repeatability"].items():
            print(f"  repeatability, prefill {S} tokens x {r['runs']}: {name}: {r['runs_differing_from_first']} runs "
                  f"not bitwise equal to the first; all-position logits vs HF eager up to "
                  f"{r['max_abs_all_logits_diff_vs_hf_eager']:.2e}; outputs vs first run up to "
                  f"{r['max_abs_output_diff_vs_first_run']:.2e}", flush=True)
        # prefill: each side builds a fresh cache, as generation does
        cases["prefill"] = (
            {"ours": lambda: ours.infer(prefill)["logits"][:, -1],
             "hf": lambda: hf(prompt, use_cache=True).logits[:, -1],
             **({"hf_onnx": lambda: hf_onnx.prefill(prompt, prompt_pos)[0]} if hf_onnx else {})},
            {})
        # decode: one token on the same P-token prefix each time; ORT presents are new tensors (the prefix is
        # untouched); HF's DynamicCache grows in place, so crop(-1) (untimed) drops the step's token again
        hf_cache = hf(prompt, use_cache=True).cache
        assert hf_cache.get_seq_length() == P
        decode_fns = {"ours": lambda: ours.infer(decode)["logits"][:, -1],
                      "hf": lambda: hf(step, cache=hf_cache, use_cache=True).logits[:, -1]}
        if hf_onnx:
            _, hf_onnx_prefix = hf_onnx.prefill(prompt, prompt_pos)
            decode_fns["hf_onnx"] = lambda: hf_onnx.decode(step, step_pos, hf_onnx_prefix)[0]
        cases["decode"] = (decode_fns, {"hf": lambda: hf_cache.crop(-1)})
        result["cases"] = [time_case(case, *cases[case], reps_arg or (5 if quick else DEFAULT_REPS[case]), quick,
                                     quiet_s) for case in ("decode", "prefill")]
    result["rss_in_timing_process_gib"] = proc_status()["VmRSS"] / GiB
    return result  # the models and sessions go with this frame


def time_case(case: str, fns: dict, after: dict, reps: int, quick: bool, quiet_s: float) -> dict:
    """Logits against HF eager, then the sides alternating (the result) and each side alone (a diagnostic)."""
    outs = {}
    for name, fn in fns.items():
        outs[name] = fn().float()
        after.get(name, lambda: None)()
    diffs = {name: float((out - outs["hf"]).abs().max()) for name, out in outs.items() if name != "hf"}
    scale = float(outs["hf"].abs().max())
    if not diffs["ours"] < PARITY_TOL:
        raise SystemExit(f"{case}: logit mismatch ours vs HF eager: {diffs['ours']:.3g} >= {PARITY_TOL}")
    if "hf_onnx" in diffs and not diffs["hf_onnx"] < PARITY_TOL:
        # not fatal: HF's graph is not deterministic at 2 threads (see repeatability()); timed all the same
        print(f"  WARNING {case}: hf_onnx vs HF eager {diffs['hf_onnx']:.3g} >= {PARITY_TOL}", flush=True)
    warmup = 1 if quick else max(2, reps // 10)
    quiet = wait_quiet(quiet_s) if quiet_s > 0 else None
    snap = cpu_snapshot()
    times = alternate(fns, reps, warmup, after=after, cooldown_s=COOLDOWN_S)
    others = others_cores(snap, cpu_snapshot())
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"case": case, "reps": reps, "warmup": warmup, "max_abs_logit": scale,
           "quiet_wait": quiet, "others_cores_during_timing": others,
           "max_abs_logit_diff_vs_hf_eager": diffs,
           "median_ms": {k: 1e3 * v for k, v in med.items()},
           "min_ms": {k: 1e3 * min(v) for k, v in times.items()},
           "ratio_ours_over": {k: med["ours"] / v for k, v in med.items() if k != "ours"},
           "paired_ratio_median_ours_over": {k: paired_ratio(times["ours"], times[k]) for k in times if k != "ours"}}
    block_reps = max(3, reps // 2)
    snap = cpu_snapshot()
    bmed = {name: statistics.median(alternate({name: fn}, block_reps, 1, after=after, cooldown_s=COOLDOWN_S)[name])
            for name, fn in fns.items()}
    row["blocks_diagnostic"] = {"reps": block_reps, "others_cores": others_cores(snap, cpu_snapshot()),
                                "median_ms": {k: 1e3 * v for k, v in bmed.items()},
                                "ratio_ours_over": {k: bmed["ours"] / v for k, v in bmed.items() if k != "ours"}}
    print(f"  {case:8s} " + "  ".join(f"{k} {v:9.2f} ms" for k, v in row["median_ms"].items()) + "  | ours/"
          + "  ours/".join(f"{k} {v:.3f}" for k, v in row["ratio_ours_over"].items())
          + f"  (diff {', '.join(f'{k} {v:.1e}' for k, v in diffs.items())}; |logit| max {scale:.1f}; "
          f"{reps} reps; other processes kept {others:.2f} cores busy)", flush=True)
    b = row["blocks_diagnostic"]
    print(f"  {'':8s} " + "  ".join(f"{k} {v:9.2f} ms" for k, v in b["median_ms"].items()) + "  | ours/"
          + "  ours/".join(f"{k} {v:.3f}" for k, v in b["ratio_ours_over"].items())
          + f"  (diagnostic: each side alone, {b['reps']} reps; others {b['others_cores']:.2f} cores)", flush=True)
    return row


def phase_profile(work: Path, config, ours_path: Path, hf_dir: Path | None, steps: int) -> dict:
    """ORT profiler on the decode step (P cached tokens) of ours and hf_onnx, steps alternating (with the pause)."""
    import onnxruntime as ort

    from export.onnx_runtime import OnnxrtRunner

    with OnnxrtRunner(ours_path, provider="cpu", threads=THREADS) as ours:
        # ours: the runner with a profiling session in place of its own (same options otherwise); the prefix run
        # goes through the plain session, so the profile holds decode steps only
        prefill, decode = ours_feeds(ours, config)
        ours.session = ort_session(ours_path, str(work / "profile_ours"))
        fns = {"ours": lambda: ours.infer(decode)}
        if hf_dir is not None:
            # hf_onnx: decode.onnx only; its prefix through decode.onnx on an empty cache (multi-token decode),
            # which is the first run in its profile and is dropped below
            hf_onnx = HfOnnx(hf_dir, load_prefill=False, profile_prefix=str(work / "profile_hf_onnx"))
            empty = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, config.num_key_value_heads, 0, config.kv_channels),
                                                              np.float32))
            _, hf_prefix = hf_onnx.decode(prefill["input_ids"], prefill["position_ids"],
                                          [empty] * len(hf_onnx.cache_in))
            fns["hf_onnx"] = lambda: hf_onnx.decode(decode["input_ids"], decode["position_ids"], hf_prefix)
        warmup = 2
        times = alternate(fns, steps, warmup, cooldown_s=COOLDOWN_S)
        out = {"ours": {"wall_ms_per_step_profiled": 1e3 * statistics.median(times["ours"]),
                        **summarize_profile(ours.session.end_profiling(), 0, steps + warmup)}}
    if hf_dir is not None:
        out["hf_onnx"] = {"wall_ms_per_step_profiled": 1e3 * statistics.median(times["hf_onnx"]),
                          **summarize_profile(hf_onnx.decode_session.end_profiling(), 1, steps + warmup)}
    return out  # the sessions go with this frame


def summarize_profile(path: str, skip_first: int, runs: int) -> dict:
    """Kernel time per run (ms), by op type and top nodes, from an ORT profile; its first `skip_first` model runs
    dropped."""
    events = json.loads(Path(path).read_text())
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    cut = run_starts[skip_first] if len(run_starts) > skip_first else 0
    by_op, by_node, total = {}, {}, 0.0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < cut:
            continue
        dur = e["dur"] / 1e3 / runs  # ms per run
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + dur
        name = e["name"][: -len("_kernel_time")]
        by_node[name] = (op, by_node.get(name, (op, 0.0))[1] + dur)
        total += dur
    top_ops = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
    top_nodes = sorted(by_node.items(), key=lambda kv: -kv[1][1])[:12]
    return {"kernel_ms_per_step": total,
            "by_op_type_ms": [{"op": k, "ms": v, "share": v / total} for k, v in top_ops],
            "top_nodes_ms": [{"node": k, "op": op, "ms": v} for k, (op, v) in top_nodes]}


# ---- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny preset, few reps")
    parser.add_argument("--reps", type=int, help="timed repetitions per case (default: 40 decode, 10 prefill)")
    parser.add_argument("--profile", action="store_true", help="also profile the decode step of both ONNX models")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--workdir", type=Path, help="folder for the checkpoint and exports (default: a temp "
                        "folder, removed at the end); an existing checkpoint/ and hf_onnx/ in it are reused")
    parser.add_argument("--keep", action="store_true", help="keep the temp work folder")
    parser.add_argument("--skip-hf-onnx", action="store_true", help="leave HF's ONNX exporter out")
    add_harness_arguments(parser, OUT_JSON.relative_to(ROOT))
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    config_name = "tiny" if args.quick else "8b-widths-2l"
    config = make_config(config_name)
    load_before = os.getloadavg()
    started = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"config {config_name}, work folder {work}", flush=True)
    report = {"provenance": provenance(), "threads": THREADS, "batch": 1, "dtype_latency": "float32",
              "prefill_tokens": S, "decode_cached_tokens": P, "config": config_name,
              "config_fields": config.to_dict(), "loadavg_1_5_15_before": load_before,
              "timing": "median wall time per call (perf_counter), ours / hf / hf_onnx alternating in one loop "
                        "(validate/timing.py alternate), order rotated per repetition, untimed 0.1 s pause before "
                        "each call; ours through OnnxrtRunner.infer (feed checks included); ratio_ours_over = ratio "
                        "of medians, paired_ratio_median = median of per-repetition ratios; blocks_diagnostic = each "
                        "side alone (same pause), fewer reps",
              "memory": "export: /usr/bin/time -v 'Maximum resident set size' of a fresh process; loading: RSS "
                        "growth of this process (after, and peak via VmHWM reset through /proc/self/clear_refs)"}
    try:
        ckpt = work / "checkpoint"
        if not (ckpt / "config.json").is_file():
            t0 = time.perf_counter()
            write_checkpoint(ckpt, config)
            print(f"wrote random checkpoint in {time.perf_counter() - t0:.1f} s", flush=True)
        numel = checkpoint_numel(ckpt)
        report["params"] = numel

        report["export"] = phase_export(work, ckpt, ["fp32", "bf16"], numel)
        if report["export"]["fp32"]["returncode"]:
            raise SystemExit("our fp32 export failed; nothing to time")
        hf_dir = None
        if not args.skip_hf_onnx:
            if (work / "hf_onnx" / "decode.onnx").is_file() and (work / "hf_export.json").is_file():
                report["hf_export"] = {**json.loads((work / "hf_export.json").read_text()),
                                       "reused_from_earlier_run_in": str(work)}
                print(f"\nreusing HF export in {work / 'hf_onnx'} (earlier run: "
                      f"{report['hf_export']['seconds']:.1f} s, peak RSS {report['hf_export']['max_rss_gib']:.2f} GiB)",
                      flush=True)
                hf_dir = work / "hf_onnx"
            else:
                report["hf_export"] = phase_hf_export(work, ckpt, numel)
                hf_dir = work / "hf_onnx" if report["hf_export"]["returncode"] == 0 else None
                write_results(work / "hf_export.json", {**report["hf_export"], "provenance": provenance()})
        shutil.rmtree(work / "ours_bf16", ignore_errors=True)  # disk: only fp32 is timed

        print(f"\n(b) latency, batch 1, fp32, {THREADS} threads, S=P={S}, alternating", flush=True)
        report["load_avg_before_timing"] = os.getloadavg()
        report["latency"] = phase_latency(ckpt, work / "ours_fp32" / "model.onnx", hf_dir, config, args.quick,
                                          args.reps, 0 if args.quick else args.wait_quiet)
        report["load_avg_after_timing"] = os.getloadavg()
        gc.collect()  # the timing process's models and sessions (~12 GiB) go before profiling loads two more
        if args.profile:
            print(f"\n(c) ORT profiler, decode step, {args.profile_steps} steps alternating", flush=True)
            try:
                report["profile"] = phase_profile(work, config, work / "ours_fp32" / "model.onnx", hf_dir,
                                                  args.profile_steps)
            except Exception as e:  # noqa: BLE001 (the timings above are still worth writing)
                report["profile"] = {}
                report["profile_error"] = f"{type(e).__name__}: {e}"
                print(f"  profiling failed: {report['profile_error']}", flush=True)
            for name, prof in report["profile"].items():
                print(f"  {name}: {prof['wall_ms_per_step_profiled']:.2f} ms/step wall (median, profiled), "
                      f"{prof['kernel_ms_per_step']:.2f} ms in kernels")
                for op in prof["by_op_type_ms"][:8]:
                    print(f"    {op['op']:22s} {op['ms']:8.2f} ms  {100 * op['share']:5.1f} %")
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["loadavg_1_5_15_after"] = os.getloadavg()
    report["total_s"] = time.perf_counter() - started

    # ---- tables
    ex = report["export"]
    print(f"\nexport (fresh process, /usr/bin/time -v), {config_name}, {numel / 1e6:.1f} M params; import-only "
          f"process peak {ex['import_baseline']['max_rss_gib']:.2f} GiB")
    print(f"{'dtype':8s}{'time s':>8s}{'peak RSS GiB':>14s}{'weights GiB':>13s}{'ratio':>7s}{'target':>8s}")
    for dtype in ("fp32", "bf16"):
        r = ex[dtype]
        if r["returncode"] == 0:
            print(f"{dtype:8s}{r['seconds']:8.1f}{r['max_rss_gib']:14.2f}{r['weight_bytes'] / GiB:13.2f}"
                  f"{r['peak_rss_over_weights']:7.2f}{'<= 1.5':>8s} {'met' if r['meets_target'] else 'NOT met'}")
    lat = report["latency"]
    print(f"\nlatency medians (ms), batch 1, fp32, {THREADS} threads, HF attn {lat['hf_attn_implementation']}")
    print(f"{'case':9s}{'ours ORT':>10s}{'HF eager':>10s}{'HF ORT':>10s}{'ours/HF eager':>15s}{'ours/HF ORT':>13s}")
    for row in lat["cases"]:
        m, r = row["median_ms"], row["ratio_ours_over"]
        print(f"{row['case']:9s}{m['ours']:10.2f}{m['hf']:10.2f}{m.get('hf_onnx', float('nan')):10.2f}"
              f"{r['hf']:15.3f}{r.get('hf_onnx', float('nan')):13.3f}")

    if args.out or not args.quick:  # --quick writes none unless given --out
        print(f"wrote {write_results(args.out or OUT_JSON, report)}")


if __name__ == "__main__":
    main()
