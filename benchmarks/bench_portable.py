"""The portable dispatch: its ONNX Runtime CPU latency against the plugin export, and TensorRT-RTX build cost.

One random checkpoint per config (write_random_checkpoint, seed 0), exported by `jetmoe export` (the CLI: its lint is
the real TensorRT-RTX parser) once per dispatch and dtype, each export a fresh process under `/usr/bin/time -v`.

(a) ort: 8B widths, 2 layers (bench_onnx.CONFIGS["8b-widths-2l"]), fp32, batch 1, 2 threads: the plugin export
    (ONNX Runtime runs the graph `OnnxrtRunner` picks for it: model.ort.onnx, export/ort_graph.py, where the export
    has one) and the portable export (standard ops, the `If` on T: gather at T <= 2, dense above) of the same
    checkpoint, each in ONNX Runtime CPU through `OnnxrtRunner(threads=2)`
    in its own worker process (one session at these widths holds 3-4 GiB; two in one process would pass the ~6 GiB
    a process may use on this shared machine). The coordinator calls them alternately through
    validate/timing.alternate (order rotated every repetition, an untimed 0.1 s pause before each call): a decode
    step on P=128 cached tokens (each worker's cache from its own prefill of the same prompt: T = 1, the gather
    branch) and a prefill of S=128 tokens (T = 128: dense). Each call is timed by its worker around `runner.infer`,
    so the pipe's round trip is not in the times. The last-position logits of the two are compared.
(b) builds: `jetmoe build OUT/model.onnx --backend tensorrt-rtx --compute-capability 8.6 --max-batch 4
    --max-seq 512` of the portable exports, fp32, fp16 and bf16, tiny preset and 8B widths x 2 layers, each a fresh
    process under `/usr/bin/time -v`: wall time, the builder's own build time ("built in"), peak RSS, engine size.
    No GPU is needed (nor used).

    python benchmarks/bench_portable.py             # both (~25 min, ~20 GB of disk); writes docs/bench/portable.json
    python benchmarks/bench_portable.py --part ort  # or --part builds
    python benchmarks/bench_portable.py --quick     # smoke run: tiny preset only, few reps; no JSON
    (--wait-quiet S: before each timed case wait up to S s for a quiet machine; --out PATH; validate/timing.py)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_onnx import COOLDOWN_S, THREADS, checkpoint_numel, make_config, write_checkpoint

from validate.timing import (
    GiB,
    add_harness_arguments,
    alternate,
    cpu_snapshot,
    others_cores,
    paired_ratio,
    proc_status,
    provenance,
    run_measured,
    summary,
    wait_quiet,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "bench" / "portable.json"
S = P = 128
DEFAULT_REPS = {"decode": 30, "prefill": 8}
BUILD = ["--backend", "tensorrt-rtx", "--compute-capability", "8.6", "--max-batch", "4", "--max-seq", "512"]
JETMOE = [sys.executable, "-m", "jetmoe"]


# ---- exports -----------------------------------------------------------------------------------------------------


def export(work: Path, ckpt: Path, dtype: str, dispatch: str) -> tuple[Path, dict]:
    out = work / f"{ckpt.name}-{dispatch}-{dtype}"
    if (out / "export.json").is_file():
        return out / "model.onnx", {"reused": True}
    r = run_measured([*JETMOE, "export", str(ckpt), "-o", str(out), "--dtype", dtype, "--dispatch", dispatch],
                     work / f"export-{ckpt.name}-{dispatch}-{dtype}.log")
    if r["returncode"]:
        raise SystemExit(f"export failed:\n{r['stderr_tail']}")
    print(f"  export {ckpt.name} {dispatch} {dtype}: {r['seconds']:.1f} s, peak RSS {r['max_rss_gib']:.2f} GiB "
          f"(its lint: the real parser)", flush=True)
    return out / "model.onnx", r


def checkpoint(work: Path, name: str) -> Path:
    ckpt = work / f"ckpt-{name}"
    if not (ckpt / "config.json").is_file():
        write_checkpoint(ckpt, make_config(name))
    return ckpt


# ---- (a) ONNX Runtime, one worker process per export ------------------------------------------------------------


def _worker(path: str, conn) -> None:
    """One export's session (through the runner contract); prepares the prefill and decode feeds, then runs the
    case it is told to and answers (seconds, last-position logits)."""
    import torch

    from export.onnx_runtime import OnnxrtRunner

    start = time.perf_counter()
    runner = OnnxrtRunner(path, threads=THREADS)
    runner.activate()
    created = time.perf_counter() - start
    config = runner.config
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(config.vocab_size, (1, S), generator=gen)
    step = torch.randint(config.vocab_size, (1, 1), generator=gen)
    feeds = {"prefill": {"input_ids": prompt, "attention_mask": torch.ones(1, S, dtype=torch.long),
                         "position_ids": torch.arange(S)[None], **runner.empty_past(1)}}
    feeds["decode"] = {"input_ids": step, "attention_mask": torch.ones(1, P + 1, dtype=torch.long),
                       "position_ids": torch.tensor([[P]]), **runner.carry_past(runner.infer(feeds["prefill"]))}
    from export.manifest import read_manifest

    files = read_manifest(path).files  # OnnxrtRunner runs model.ort.onnx where the export has one
    graph = "model.ort.onnx" if "model.ort.onnx" in files else "model.onnx"
    conn.send({"session_s": created, "graph": graph, "rss_gib": {k: v / GiB for k, v in proc_status().items()}})
    while (case := conn.recv()) is not None:
        begin = time.perf_counter()
        logits = runner.infer(feeds[case])["logits"]
        conn.send((time.perf_counter() - begin, logits[0, -1].numpy()))
    runner.deactivate()
    conn.send({"rss_gib": {k: v / GiB for k, v in proc_status().items()}})


def phase_ort(work: Path, name: str, reps: dict[str, int], quiet_s: float) -> dict:
    import numpy as np

    ckpt = checkpoint(work, name)
    result = {"config": name, "exports": {}, "workers": {}}
    paths = {}
    for dispatch in ("plugin", "portable"):
        paths[dispatch], result["exports"][dispatch] = export(work, ckpt, "fp32", dispatch)
    context = multiprocessing.get_context("spawn")
    workers = {}
    for dispatch, path in paths.items():  # one at a time: their session-creation peaks do not add up
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(str(path), theirs), daemon=True)
        process.start()
        workers[dispatch] = (process, ours)
        result["workers"][dispatch] = ours.recv()
        print(f"  {dispatch}: session {result['workers'][dispatch]['session_s']:.1f} s, "
              f"RSS {result['workers'][dispatch]['rss_gib']}", flush=True)

    def call(dispatch: str, case: str):
        workers[dispatch][1].send(case)
        return workers[dispatch][1].recv()

    pids = [process.pid for process, _ in workers.values()]
    for case in ("decode", "prefill"):
        logits = {d: call(d, case)[1] for d in workers}
        quiet = wait_quiet(quiet_s) if quiet_s else None
        before, workers_before = cpu_snapshot(), _cpu_seconds(pids)
        samples = alternate({d: (lambda d=d, case=case: call(d, case)[0]) for d in workers}, reps=reps[case],
                            warmup=1, cooldown_s=COOLDOWN_S, timer=lambda fn: fn())
        after = cpu_snapshot()
        ours = _cpu_seconds(pids) - workers_before  # the workers' CPU is ours, not other processes'
        others = max(0.0, others_cores(before, after) - ours / (after[0] - before[0]))
        result[case] = {
            "reps": reps[case], **{d: summary(s) for d, s in samples.items()},
            "portable_over_plugin_medians": summary(samples["portable"])["median_ms"]
            / summary(samples["plugin"])["median_ms"],
            "portable_over_plugin_paired": paired_ratio(samples["portable"], samples["plugin"]),
            "max_abs_last_logits_diff": float(np.abs(logits["plugin"] - logits["portable"]).max()),
            "max_abs_last_logit": float(np.abs(logits["plugin"]).max()),
            "others_cores": others, "quiet_wait": quiet}
        r = result[case]
        print(f"  {case}: plugin {r['plugin']['median_ms']:.1f} ms, portable {r['portable']['median_ms']:.1f} ms, "
              f"ratio {r['portable_over_plugin_medians']:.2f} (paired {r['portable_over_plugin_paired']:.2f}); "
              f"|logits diff| {r['max_abs_last_logits_diff']:.2e}; other processes kept {r['others_cores']:.2f} cores "
              f"busy",
              flush=True)
    for dispatch, (process, conn) in workers.items():
        conn.send(None)
        result["workers"][dispatch]["end"] = conn.recv()
        process.join(timeout=120)
    return result


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (Linux /proc)."""
    import os

    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


# ---- (b) TensorRT-RTX builds ------------------------------------------------------------------------------------


def phase_builds(work: Path, names: list[str], dtypes: list[str]) -> dict:
    results = {}
    for name in names:
        ckpt = checkpoint(work, name)
        numel = checkpoint_numel(ckpt)
        for dtype in dtypes:
            onnx_path, exported = export(work, ckpt, dtype, "portable")
            engine = work / f"{name}-{dtype}.engine"
            r = run_measured([*JETMOE, "build", str(onnx_path), "-o", str(engine), *BUILD, "--overwrite"],
                             work / f"build-{name}-{dtype}.log")
            if r["returncode"]:
                raise SystemExit(f"build failed:\n{r['stderr_tail']}")
            log = (work / f"build-{name}-{dtype}.log").read_text()
            built = re.search(r"built in ([\d.]+) s", log)
            r.update({"config": name, "dtype": dtype, "params": numel, "export": exported,
                      "engine_bytes": engine.stat().st_size, "build_s": float(built.group(1)) if built else None,
                      "onnx_data_bytes": (onnx_path.parent / "model.onnx.data").stat().st_size})
            results[f"{name}/{dtype}"] = r
            print(f"  build {name} {dtype}: {r['seconds']:.1f} s wall (builder {r['build_s']} s), engine "
                  f"{r['engine_bytes'] / 2**20:.1f} MiB, peak RSS {r['max_rss_gib']:.2f} GiB", flush=True)
            engine.unlink()  # engines at 8B widths are 1.5-3 GB: keep the disk for the next one
            engine.with_name(engine.name + ".json").unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "ort", "builds"), default="all")
    parser.add_argument("--quick", action="store_true", help="tiny preset only, few reps")
    parser.add_argument("--workdir", type=Path, help="where checkpoints and exports go (default: a temp folder, "
                        "removed at the end; an existing one is reused)")
    add_harness_arguments(parser, OUT_JSON.relative_to(ROOT))
    args = parser.parse_args()
    out = args.out or OUT_JSON
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_portable_"))
    work.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version

    results = json.loads(out.read_text()) if args.part != "all" and out.is_file() else {}  # one part: merged in
    results.update({"provenance": provenance(), "tensorrt_rtx": version("tensorrt-rtx-cu12"), "threads": THREADS,
                    "S": S, "P": P, "build_options": BUILD})
    try:
        if args.part in ("all", "ort"):
            name = "tiny" if args.quick else "8b-widths-2l"
            print(f"\n(a) ONNX Runtime, {name}: plugin export vs portable export", flush=True)
            reps = {"decode": 3, "prefill": 2} if args.quick else DEFAULT_REPS
            results["ort"] = phase_ort(work, name, reps, 0 if args.quick else args.wait_quiet)
            results["ort"]["provenance"] = results["provenance"]
        if args.part in ("all", "builds"):
            names = ["tiny"] if args.quick else ["tiny", "8b-widths-2l"]
            print(f"\n(b) TensorRT-RTX builds: {', '.join(names)}", flush=True)
            results["builds"] = phase_builds(work, names, ["fp32", "fp16", "bf16"])
            results["builds"]["provenance"] = results["provenance"]
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["coordinator_peak_rss_gib"] = proc_status()["VmHWM"] / GiB
    if args.out or not args.quick:  # --quick writes none unless given --out
        write_results(out, results)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
