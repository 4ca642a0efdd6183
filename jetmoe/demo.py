"""`jetmoe demo`: the pipeline on the embedded default, a small random JetMoe made on the spot.

Today: write the checkpoint, reload it, check that cached decoding equals a full forward, and generate.
Export, validation and engine building join here as they land.
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


def run_demo(workdir: Path, seed: int = 0, max_new_tokens: int = 16) -> None:
    workdir = Path(workdir)
    start = time.perf_counter()
    checkpoint = write_random_checkpoint(workdir / "checkpoint", JetMoeConfig.from_preset("tiny"), seed=seed,
                                         overwrite=True)
    print(f"[1/3] random tiny checkpoint (seed {seed}) -> {checkpoint}")
    model = JetMoeForCausalLM.from_pretrained(checkpoint)

    prompt = torch.tensor([DEMO_PROMPTS[0]])
    with torch.inference_mode():
        full = model(prompt, use_cache=False).logits[:, -1]
        prefix = model(prompt[:, :-1], use_cache=True)
        cached = model(prompt[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    diff = float((full - cached).abs().max())
    print(f"[2/3] cached decode vs full forward: max |diff| = {diff:.2e}")
    if diff > 1e-4:
        raise JetMoeError(f"cached decoding disagrees with the full forward by {diff:.2e} (limit 1e-4)")

    outputs = model.generate(DEMO_PROMPTS, max_new_tokens=max_new_tokens)
    print(f"[3/3] greedy generation, batch of {len(DEMO_PROMPTS)} (left-padded):")
    for prompt_ids, tokens in zip(DEMO_PROMPTS, outputs):
        print(f"      {prompt_ids} -> {tokens}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
