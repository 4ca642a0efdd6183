"""jetmoe-8b at full size (24 layers, random weights in the real layout) on this machine: every stage's time and
peak memory, each in a fresh process under /usr/bin/time -v.

Stages, in order (a stage's files are removed once nothing later needs them, to stay within the disk):
  checkpoint   `jetmoe checkpoint --preset jetmoe-8b` (bf16, 4 shards + index, original config keys)
  export       `jetmoe export --dtype fp16 --validation-outputs` and `--dtype bf16` (model.onnx size, weights in
               model.onnx.data)
  ort-load     ONNX Runtime session creation on the fp16 export (model.ort.onnx): time, peak RSS / weight bytes
  latency      ORT fp16 decode step (128 cached) and prefill of 128 tokens; then eager bf16 the same, in its own
               process afterwards (both do not fit in memory at once), batch 1, 2 threads
  generate     `jetmoe generate OUT/model.onnx --prompt-ids ... --max-new-tokens 8` through ONNX Runtime
  validate     `jetmoe validate CKPT --onnx fp16 export --long-context 128` (layer-major fp32 reference)
  fp16-drift   the control for validate: the same cases through the eager model in fp16 (layer-major,
               validate/reference.py with dtype fp16) against the fp32 reference, per step, beside ONNX Runtime
               fp16's figures from validate: what fp16 arithmetic costs on these weights, graph or no graph
  export-fp32  what an fp32 export of 34 GB of weights does here (time, peak RSS, size; not run in ORT: it
               cannot fit in 24 GB)

    python benchmarks/bench_fullsize.py --work /work/big      # ~1.5-2 h, ~60 GB of disk at the peak
    python benchmarks/bench_fullsize.py --work W --stages checkpoint,export

Writes docs/bench/fullsize.json (every stage's record; provenance) unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from validate.timing import GiB, add_harness_arguments, provenance, run_measured, wait_quiet, write_results

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "bench" / "fullsize.json"
STAGES = ("checkpoint", "export", "ort-load", "latency", "generate", "validate", "fp16-drift", "export-fp32")
PROMPT = [1, 306, 4658, 278, 6593, 310, 2834, 338]  # HF's slow-test prompt for jetmoe-8b
S = P = 128
THREADS = 2


def jetmoe(*args: object) -> list[str]:
    return [sys.executable, "-m", "jetmoe", *map(str, args)]


def this(*args: object) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *map(str, args)]


def weight_bytes(folder: Path, names: tuple[str, ...]) -> int:
    return sum((folder / name).stat().st_size for name in names if (folder / name).is_file())


def stage(name: str, work: Path, record: dict, quiet_s: float) -> None:
    ckpt, fp16, bf16, fp32 = work / "ckpt", work / "fp16", work / "bf16", work / "fp32"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if name == "checkpoint":
        record[name] = run_measured(jetmoe("checkpoint", "--preset", "jetmoe-8b", "-o", ckpt, "--overwrite"),
                                    logs / "checkpoint.log", cwd=ROOT)
        record[name]["bytes"] = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    elif name == "export":
        for dtype, out, extra in (("fp16", fp16, ["--validation-outputs"]), ("bf16", bf16, [])):
            result = run_measured(jetmoe("export", ckpt, "-o", out, "--dtype", dtype, "--overwrite", *extra),
                                  logs / f"export-{dtype}.log", cwd=ROOT)
            if out.is_dir():
                result["model_onnx_bytes"] = (out / "model.onnx").stat().st_size
                result["data_bytes"] = (out / "model.onnx.data").stat().st_size
                result["files"] = sorted(p.name for p in out.iterdir())
            record[f"export-{dtype}"] = result
        shutil.rmtree(bf16, ignore_errors=True)  # nothing runs a bf16 export on this CPU machine
    elif name == "ort-load":
        result = run_measured(this("--phase", "ort-load", fp16), logs / "ort-load.log", cwd=ROOT)
        result.update(_last_json(logs / "ort-load.log"))
        result["weight_bytes"] = weight_bytes(fp16, ("model.onnx.data",))
        if result.get("max_rss_gib"):
            result["peak_over_weights"] = result["max_rss_gib"] * GiB / result["weight_bytes"]
        record[name] = result
    elif name == "latency":
        record["wait_quiet"] = wait_quiet(quiet_s)
        for side, target in (("ort-fp16", fp16), ("eager-bf16", ckpt)):
            result = run_measured(this("--phase", side, target), logs / f"latency-{side}.log", cwd=ROOT)
            result.update(_last_json(logs / f"latency-{side}.log"))
            record[f"latency-{side}"] = result
        ort, eager = record["latency-ort-fp16"], record["latency-eager-bf16"]
        if "decode_ms" in ort and "decode_ms" in eager:
            record["latency-ratios"] = {"decode ort/eager": ort["decode_ms"] / eager["decode_ms"],
                                        "prefill ort/eager": ort["prefill_ms"] / eager["prefill_ms"]}
    elif name == "generate":
        record[name] = run_measured(jetmoe("generate", fp16 / "model.onnx", "--prompt-ids",
                                           ",".join(map(str, PROMPT)), "--max-new-tokens", 8),
                                    logs / "generate.log", cwd=ROOT)
    elif name == "validate":
        report = work / "validation.json"
        record[name] = run_measured(jetmoe("validate", ckpt, "--onnx", fp16 / "model.onnx", "--long-context", 128,
                                           "--json", report), logs / "validate.log", cwd=ROOT)
        if report.is_file():
            record[name].update(validation_summary(json.loads(report.read_text())))
        shutil.rmtree(fp16, ignore_errors=True)
    elif name == "fp16-drift":
        result = run_measured(this("--phase", "fp16-drift", ckpt), logs / "fp16-drift.log", cwd=ROOT)
        result.update(_last_json(logs / "fp16-drift.log"))
        record[name] = result
    elif name == "export-fp32":
        result = run_measured(jetmoe("export", ckpt, "-o", fp32, "--dtype", "fp32", "--overwrite"),
                              logs / "export-fp32.log", cwd=ROOT)
        if fp32.is_dir():
            result["model_onnx_bytes"] = (fp32 / "model.onnx").stat().st_size
            result["data_bytes"] = (fp32 / "model.onnx.data").stat().st_size
        record[name] = result
        shutil.rmtree(fp32, ignore_errors=True)


def step_row(case: str, step: str, logits: dict, sub_blocks: list[dict]) -> dict:
    """One validation step's figures (the report's names), with the hidden-state error after the last block."""
    return {"case": case, "step": step, **{k: logits[k] for k in ("max_abs", "top1", "cosine", "kl")},
            "last_block_rel": sub_blocks[-1]["rel_error"] if sub_blocks else None}


def validation_summary(report: dict) -> dict:
    """What the record keeps of a `jetmoe validate --json` report: verdicts and every step's figures."""
    return {"passed": report["passed"],
            "backends": [{"name": b["name"], "passed": b["passed"],
                          "steps": [step_row(s["case"], s["step"], s["logits"], s["sub_block_errors"] or [])
                                    for s in b["steps"]],
                          "first_divergent_token": b["generation"]["first_divergent_step"] if b["generation"] else None}
                         for b in report["backends"] if b["available"]]}


def _last_json(log: Path) -> dict:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


# ---- phases: run in a process of their own -------------------------------------------------------------------


def phase_ort_load(folder: Path) -> dict:
    import time

    from export.onnx_runtime import OnnxrtRunner

    runner = OnnxrtRunner(folder, threads=THREADS)
    start = time.perf_counter()
    runner.activate()
    created = time.perf_counter() - start
    graph = "model.ort.onnx" if (Path(folder) / "model.ort.onnx").is_file() else "model.onnx"
    return {"create_s": created, "graph": graph}


def phase_latency(side: str, target: Path, reps: int = 3) -> dict:
    """Median ms of a prefill of S tokens and of one decode step on P cached tokens, batch 1 (one process)."""
    import torch

    from jetmoe.model import JetMoeForCausalLM
    from jetmoe.runner import EagerRunner
    from validate.timing import alternate

    torch.set_num_threads(THREADS)
    if side == "ort-fp16":
        from export.onnx_runtime import OnnxrtRunner

        runner = OnnxrtRunner(target, threads=THREADS)
    else:
        runner = EagerRunner(JetMoeForCausalLM.from_pretrained(target, dtype="bf16"))
    with runner:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(3, runner.config.vocab_size, (1, S), generator=gen)
        prefill = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(S)[None],
                   **runner.empty_past(1)}
        past = runner.carry_past(runner.infer(prefill))
        step = {"input_ids": torch.tensor([[42]]), "attention_mask": torch.ones(1, P + 1, dtype=torch.long),
                "position_ids": torch.tensor([[P]]), **past}
        samples = alternate({"prefill": lambda: runner.infer(prefill), "decode": lambda: runner.infer(step)},
                            reps=reps, warmup=1)
    return {"prefill_ms": 1e3 * statistics.median(samples["prefill"]),
            "decode_ms": 1e3 * statistics.median(samples["decode"]), "reps": reps, "threads": THREADS}


def phase_fp16_drift(ckpt: Path) -> dict:
    """validate's cases through eager fp16 against the fp32 reference, both layer-major (validate/reference.py)."""
    import dataclasses

    import torch

    from jetmoe.config import JetMoeConfig
    from jetmoe.io_names import IoNames
    from validate import metrics
    from validate.cases import default_cases
    from validate.reference import reference_steps

    torch.set_num_threads(THREADS)
    config = JetMoeConfig.from_pretrained(ckpt)
    cases = default_cases(config, 4, 128)  # as `jetmoe validate --long-context 128`
    names = IoNames(config.num_hidden_layers, "causal-lm", validation_outputs=True)
    ref = reference_steps(ckpt, cases)
    fp16 = reference_steps(ckpt, cases, dtype=torch.float16)
    rows = []
    for case in cases:
        for r, t in zip(ref[case.name], fp16[case.name], strict=True):
            logits = metrics.logit_stats(r.outputs["logits"][r.real], t.outputs["logits"][r.real])
            stages = metrics.sub_block_errors(r.outputs, t.outputs, names, r.real)
            rows.append(step_row(case.name, r.label, dataclasses.asdict(logits),
                                 [{"rel_error": rel} for _, rel in stages]))
    return {"eager-fp16": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="work folder (needs ~60 GB free)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("target", nargs="?", type=Path, help=argparse.SUPPRESS)
    add_harness_arguments(parser, OUT_JSON.relative_to(ROOT))
    args = parser.parse_args()
    if args.phase == "ort-load":
        print(json.dumps(phase_ort_load(args.target)), flush=True)
        return
    if args.phase == "fp16-drift":
        print(json.dumps(phase_fp16_drift(args.target)), flush=True)
        return
    if args.phase in ("ort-fp16", "eager-bf16"):
        print(json.dumps(phase_latency(args.phase, args.target)), flush=True)
        return
    if args.work is None:
        parser.error("--work is required")
    record: dict = {"provenance": provenance()}
    out = args.out or OUT_JSON
    if out.is_file():  # stages run in separate invocations add to one record
        record = {**json.loads(out.read_text()), "provenance": provenance()}
    for name in args.stages.split(","):
        if name not in STAGES:
            parser.error(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
        print(f"== {name}", flush=True)
        stage(name, args.work, record, args.wait_quiet)
        write_results(out, record)
        print(json.dumps({k: v for k, v in record.items() if k.startswith(name)}, indent=1, default=str)[:3000],
              flush=True)


if __name__ == "__main__":
    main()
