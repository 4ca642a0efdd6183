"""`jetmoe demo`: the pipeline on the embedded default, a small random JetMoe made on the spot.

Checkpoint -> eager check -> ONNX export -> validation report (ONNX Runtime, and TensorRT where present, against
eager fp32) -> generation. TensorRT engine building joins here when it lands.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from jetmoe.config import JetMoeConfig
from jetmoe.errors import JetMoeError
from jetmoe.model import JetMoeForCausalLM
from jetmoe.random_weights import write_random_checkpoint

DEMO_PROMPTS = [[1, 306, 50, 278, 310], [1, 274, 338]]
TOLERANCE = 1e-4  # fp32 logits, eager vs cached eager vs ONNX Runtime


def run_demo(workdir: Path, seed: int = 0, max_new_tokens: int = 16) -> None:
    from export.exporter import export_checkpoint
    from export.onnx_runtime import OnnxModel
    from validate.validator import validate_export

    workdir = Path(workdir)
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

    onnx_path = export_checkpoint(checkpoint, workdir / "onnx", validation_outputs=True, overwrite=True,
                                  progress=False)
    print(f"[3/5] ONNX export (custom jetmoe dispatch nodes, TensorRT lint passed) -> {onnx_path}")
    report = validate_export(checkpoint, onnx=onnx_path, progress=False)
    report.save(workdir / "validation.json")
    print("[4/5] validation against eager fp32 (full report: " f"{workdir / 'validation.json'}):")
    print("\n".join("      " + line for line in report.table().splitlines()))
    if not report:
        raise JetMoeError("validation failed: the export does not match the eager model")
    onnx_model = OnnxModel(onnx_path)

    eager_tokens = model.generate(DEMO_PROMPTS, max_new_tokens=max_new_tokens)
    onnx_tokens = onnx_model.generate(DEMO_PROMPTS, max_new_tokens=max_new_tokens)
    print(f"[5/5] greedy generation, batch of {len(DEMO_PROMPTS)} (left-padded), eager and ONNX Runtime:")
    for prompt_ids, tokens in zip(DEMO_PROMPTS, onnx_tokens):
        print(f"      {prompt_ids} -> {tokens}")
    if onnx_tokens != eager_tokens:
        raise JetMoeError(f"ONNX Runtime generated {onnx_tokens}, eager generated {eager_tokens}")
    print(f"      identical to eager. demo finished in {time.perf_counter() - start:.1f} s")


def _check(what: str, diff: float, step: str) -> None:
    print(f"[{step}] {what}: max |diff| = {diff:.2e} (limit {TOLERANCE:.0e})")
    if diff > TOLERANCE:
        raise JetMoeError(f"{what} differ by {diff:.2e}, over the limit {TOLERANCE:.0e}")
