"""Integer experts in ONNX Runtime CPU (`jetmoe quantize`, export/quantize.py) against the fp32 export: folder size,
quantize cost, top-1 agreement with eager fp32, decode latency.

At 8B widths with 2 layers (bench_onnx.CONFIGS["8b-widths-2l"]), random weights (bench_onnx.write_checkpoint, seed
0), batch 1, 2 threads. Every step is a process of its own, so that none holds more than one model besides what it
measures:

  export     `jetmoe export CKPT -o WORK/fp32` under /usr/bin/time -v (validate/timing.run_measured).
  quantize   `jetmoe quantize WORK/fp32 -o WORK/VARIANT ...` for each variant below, under /usr/bin/time -v: wall
             time and peak RSS (ONNX Runtime's quantizers hold the whole unrolled model), folder size.
  agreement  eager fp32 (`EagerRunner`) and then each ONNX model (`OnnxrtRunner(threads=2)`) on PROMPTS random
             prompts of PROMPT_TOKENS tokens, one prefill each, through the runner contract: top-1 agreement with
             eager over every position, on the positions where eager's top-2 margin exceeds MARGIN, and max |dlogit|.
             Eager's logits are computed once (WORK/reference.npz).
  latency    the fp32 export and one variant in one process (~5 GiB at 8B widths: both sessions), a decode step on
             P=128 cached tokens (each side's cache from its own prefill of the same prompt), timed alternately by
             validate/timing.alternate (order rotated each repetition, an untimed COOLDOWN_S pause before each
             call); medians, the median of paired ratios, and the cores other processes kept busy meanwhile.

    python benchmarks/bench_int8.py                  # ~20 min, ~9 GB of disk; writes docs/bench/int8.json
    python benchmarks/bench_int8.py --quick          # tiny preset, few reps; no JSON unless --out
    (--workdir DIR keeps checkpoint, exports and logs and reuses them; --wait-quiet S, --out PATH: validate/timing.py)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_onnx import COOLDOWN_S, THREADS, make_config, write_checkpoint

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
OUT_JSON = ROOT / "docs" / "bench" / "int8.json"
PROMPTS, PROMPT_TOKENS = 8, 64
MARGIN = 0.1  # eager top-2 logit margin above which a position counts as "clear"
P = 128
DEFAULT_REPS = 24
VARIANTS = {  # name -> `jetmoe quantize` options
    "int8-weight-only": ["--scheme", "int8-weight-only"],
    "int8-weight-only-mlp": ["--scheme", "int8-weight-only", "--experts", "mlp"],
    "int4-weight-only": ["--scheme", "int4-weight-only"],
    "int8-dynamic": ["--scheme", "int8-dynamic"],
}
JETMOE = [sys.executable, "-m", "jetmoe"]


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def prompts(vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(3, vocab, size=(PROMPTS, PROMPT_TOKENS))


# ---- the steps that run in a process of their own ---------------------------------------------------------------


def prefill_logits(runner) -> np.ndarray:
    """[PROMPTS, PROMPT_TOKENS, V] fp32 logits, one unpadded prefill per prompt, through the runner contract."""
    import torch

    out = []
    with runner:
        for row in prompts(runner.config.vocab_size):
            ids = torch.from_numpy(row)[None]
            feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "position_ids": torch.arange(ids.shape[1])[None], **runner.empty_past(1)}
            out.append(runner.infer(feeds)["logits"][0].float().numpy())
    return np.stack(out)


def step_reference(work: Path, result: Path) -> None:
    import torch

    from jetmoe.model import JetMoeForCausalLM
    from jetmoe.runner import EagerRunner

    torch.set_num_threads(THREADS)
    logits = prefill_logits(EagerRunner(lambda: JetMoeForCausalLM.from_pretrained(work / "ckpt", dtype="fp32")))
    top2 = np.sort(logits, axis=-1)[..., -2:]
    np.savez(work / "reference.npz", top1=logits.argmax(-1), margin=top2[..., 1] - top2[..., 0], logits=logits)
    write_results(result, {"peak_rss_gib": proc_status()["VmHWM"] / GiB})


def step_agreement(work: Path, model: Path, result: Path) -> None:
    from export.onnx_runtime import OnnxrtRunner

    ref = np.load(work / "reference.npz")
    logits = prefill_logits(OnnxrtRunner(model, threads=THREADS))
    agree = logits.argmax(-1) == ref["top1"]
    clear = ref["margin"] > MARGIN
    write_results(result, {"top1": float(agree.mean()), "top1_clear_margin": float(agree[clear].mean()),
                           "clear_fraction": float(clear.mean()), "positions": int(agree.size),
                           "max_abs_logit_diff": float(np.abs(logits - ref["logits"]).max()),
                           "reference_max_abs_logit": float(np.abs(ref["logits"]).max()),
                           "peak_rss_gib": proc_status()["VmHWM"] / GiB})


def step_latency(fp32: Path, model: Path, reps: int, quiet_s: float, result: Path) -> None:
    import torch

    from export.onnx_runtime import OnnxrtRunner

    runners = {"fp32": OnnxrtRunner(fp32, threads=THREADS), "quantized": OnnxrtRunner(model, threads=THREADS)}
    calls = {}
    for name, runner in runners.items():
        runner.activate()
        gen = torch.Generator().manual_seed(1)
        prompt = torch.randint(3, runner.config.vocab_size, (1, P), generator=gen)
        prefill = {"input_ids": prompt, "attention_mask": torch.ones(1, P, dtype=torch.long),
                   "position_ids": torch.arange(P)[None], **runner.empty_past(1)}
        step = {"input_ids": torch.tensor([[7]]), "attention_mask": torch.ones(1, P + 1, dtype=torch.long),
                "position_ids": torch.tensor([[P]]), **runner.carry_past(runner.infer(prefill))}
        calls[name] = lambda runner=runner, step=step: runner.infer(step)
    quiet = wait_quiet(quiet_s) if quiet_s else None
    before = cpu_snapshot()
    samples = alternate(calls, reps=reps, warmup=3, cooldown_s=COOLDOWN_S)
    others = others_cores(before, cpu_snapshot())
    for runner in runners.values():
        runner.deactivate()
    medians = {name: summary(s)["median_ms"] for name, s in samples.items()}
    write_results(result, {
        **{name: summary(s) for name, s in samples.items()},
        "quantized_over_fp32_medians": medians["quantized"] / medians["fp32"],
        "quantized_over_fp32_paired": paired_ratio(samples["quantized"], samples["fp32"]),
        "others_cores": others, "quiet_wait": quiet, "peak_rss_gib": proc_status()["VmHWM"] / GiB})


# ---- the coordinator --------------------------------------------------------------------------------------------


def step(work: Path, name: str, *args: str) -> dict:
    """Run one step of this script in a fresh process under /usr/bin/time -v; its results and the wall/RSS."""
    result = work / f"{name}.json"
    measured = run_measured([sys.executable, __file__, "--workdir", str(work), *args, "--result", str(result)],
                            work / f"{name}.log")
    if measured["returncode"]:
        raise SystemExit(f"{name} failed:\n{measured['stderr_tail']}")
    return {**json.loads(result.read_text()), "process": measured}


def run(work: Path, config_name: str, reps: int, quiet_s: float) -> dict:
    results: dict = {"config": config_name, "prompts": [PROMPTS, PROMPT_TOKENS], "margin": MARGIN,
                     "decode_cached_tokens": P, "threads": THREADS, "variants": VARIANTS}
    ckpt, fp32 = work / "ckpt", work / "fp32"
    if not (ckpt / "config.json").is_file():
        write_checkpoint(ckpt, make_config(config_name))
    if not (fp32 / "export.json").is_file():
        results["export"] = run_measured([*JETMOE, "export", str(ckpt), "-o", str(fp32)], work / "export.log")
    results["sizes_bytes"] = {"fp32": folder_bytes(fp32)}
    for name, options in VARIANTS.items():
        if not (work / name / "export.json").is_file():
            r = run_measured([*JETMOE, "quantize", str(fp32), "-o", str(work / name), *options],
                             work / f"quantize-{name}.log")
            if r["returncode"]:
                raise SystemExit(f"quantize {name} failed:\n{r['stderr_tail']}")
            results[f"quantize/{name}"] = r
            print(f"  quantize {name}: {r['seconds']:.0f} s, peak RSS {r['max_rss_gib']:.2f} GiB", flush=True)
        results["sizes_bytes"][name] = folder_bytes(work / name)
    if not (work / "reference.npz").is_file():
        results["reference"] = step(work, "reference", "--step", "reference")
    for name in ["fp32", *VARIANTS]:
        r = results[f"agreement/{name}"] = step(work, f"agreement-{name}", "--step", "agreement", "--model",
                                                str(work / name))
        print(f"  agreement {name}: top-1 {r['top1']:.3f} (clear margin {r['top1_clear_margin']:.3f}), max |dlogit| "
              f"{r['max_abs_logit_diff']:.3g}", flush=True)
    for name in VARIANTS:
        r = results[f"latency/{name}"] = step(work, f"latency-{name}", "--step", "latency", "--model",
                                              str(work / name), "--reps", str(reps), "--wait-quiet", str(quiet_s))
        print(f"  decode {name}: {r['quantized']['median_ms']:.1f} ms vs fp32 {r['fp32']['median_ms']:.1f} ms, ratio "
              f"{r['quantized_over_fp32_medians']:.2f} (paired {r['quantized_over_fp32_paired']:.2f}); other processes "
              f"kept {r['others_cores']:.2f} cores busy", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, few reps")
    parser.add_argument("--workdir", type=Path, help="where checkpoint, exports and logs go (default: a temp folder, "
                        "removed at the end; an existing one is reused)")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="timed decode steps per side")
    parser.add_argument("--step", choices=("reference", "agreement", "latency"), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    add_harness_arguments(parser, OUT_JSON.relative_to(ROOT))
    args = parser.parse_args()
    if args.step == "reference":
        return step_reference(args.workdir, args.result)
    if args.step == "agreement":
        return step_agreement(args.workdir, args.model, args.result)
    if args.step == "latency":
        return step_latency(args.workdir / "fp32", args.model, args.reps, args.wait_quiet, args.result)

    out = args.out or OUT_JSON
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_int8_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        name = "tiny" if args.quick else "8b-widths-2l"
        print(f"integer experts in ONNX Runtime CPU, {name}", flush=True)
        results = {"provenance": provenance(), **run(work, name, 3 if args.quick else args.reps,
                                                      0 if args.quick else args.wait_quiet)}
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.out or not args.quick:  # --quick writes none unless given --out
        write_results(out, results)
        print(f"wrote {out}")
    return None


if __name__ == "__main__":
    main()
