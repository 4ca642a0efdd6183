"""`jetmoe demo`: the pipeline on the embedded default, a small random JetMoe made on the spot.

Checkpoint -> eager check -> ONNX export -> validation report (ONNX Runtime against eager fp32) -> generation,
all inside one work folder: `checkpoint/`, `onnx/`, `validation.json` and a marker file. The demo refuses a
folder that holds anything it did not write (it never deletes what is yours), and replaces its own earlier
results.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from export.exporter import export_checkpoint
from export.onnx_runtime import OnnxrtRunner
from jetmoe.config import JetMoeConfig
from jetmoe.errors import OutputError, ValidationFailed
from jetmoe.fileio import atomic_write_text, check_output
from jetmoe.generate import generate
from jetmoe.model import JetMoeForCausalLM
from jetmoe.random_weights import write_random_checkpoint
from validate.validator import validate_export

DEMO_PROMPTS = [[1, 306, 50, 278, 310], [1, 274, 338]]
TOLERANCE = 1e-4  # fp32 logits, eager vs cached eager vs ONNX Runtime
MARKER = ".jetmoe-demo"  # says a folder was made by the demo, so its contents may be replaced
OUTPUTS = ("checkpoint", "onnx", "validation.json", MARKER)


def run_demo(workdir: str | Path = "jetmoe-demo", seed: int = 0, max_new_tokens: int = 16) -> None:
    """Run the demo in `workdir` (created if needed); print each step's result. ValidationFailed on a mismatch."""
    workdir = Path(workdir)
    _claim(workdir)
    start = time.perf_counter()
    checkpoint = write_random_checkpoint(workdir / "checkpoint", JetMoeConfig.from_preset("tiny"), seed=seed,
                                         overwrite=True)
    print(f"[1/5] random tiny checkpoint (seed {seed}) -> {checkpoint}")
    model = JetMoeForCausalLM.from_pretrained(checkpoint)

    prompt = torch.tensor([DEMO_PROMPTS[0]])
    with torch.inference_mode():
        full = model(prompt, use_cache=False).logits
        prefix = model(prompt[:, :-1], use_cache=True)
        cached = model(prompt[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits
    _check("cached decode vs full forward (eager)", float((full[:, -1] - cached[:, -1]).abs().max()), "2/5")

    onnx_path = export_checkpoint(checkpoint, workdir / "onnx", validation_outputs=True, overwrite=True)
    print(f"[3/5] ONNX export (custom jetmoe dispatch nodes, TensorRT lint passed) -> {onnx_path}")
    report = validate_export(checkpoint, onnx=onnx_path)
    report.save(workdir / "validation.json")
    print(f"[4/5] validation against eager fp32 (full report: {workdir / 'validation.json'}):")
    print("\n".join("      " + line for line in report.table().splitlines()))
    if not report:
        raise ValidationFailed("the export does not match the eager model (see the table above)")

    eager_tokens = model.generate(DEMO_PROMPTS, max_new_tokens=max_new_tokens)
    with OnnxrtRunner(onnx_path) as runner:
        onnx_tokens = generate(runner, DEMO_PROMPTS, max_new_tokens=max_new_tokens)
    print(f"[5/5] greedy generation, batch of {len(DEMO_PROMPTS)} (left-padded), eager and ONNX Runtime:")
    for prompt_ids, tokens in zip(DEMO_PROMPTS, onnx_tokens, strict=True):
        print(f"      {prompt_ids} -> {tokens}")
    if onnx_tokens != eager_tokens:
        raise ValidationFailed(f"ONNX Runtime generated {onnx_tokens}, eager generated {eager_tokens}")
    print(f"      identical to eager. demo finished in {time.perf_counter() - start:.1f} s")


def _claim(workdir: Path) -> None:
    """Make `workdir` the demo's: new, empty, or made by an earlier demo (its marker file); else OutputError."""
    check_output(workdir, kind="dir", overwrite=True, marker=MARKER)
    if workdir.is_dir():
        foreign = sorted(p.name for p in workdir.iterdir() if p.name not in OUTPUTS)
        if foreign:
            raise OutputError(f"{workdir} holds files the demo did not write ({', '.join(foreign[:5])}); "
                              f"choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workdir / MARKER, "made by `jetmoe demo`; its outputs here are replaced by the next demo\n")


def _check(what: str, diff: float, step: str) -> None:
    print(f"[{step}] {what}: max |diff| = {diff:.2e} (limit {TOLERANCE:.0e})")
    if diff > TOLERANCE:
        raise ValidationFailed(f"{what} differ by {diff:.2e}, over the limit {TOLERANCE:.0e}")
