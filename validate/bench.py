"""`jetmoe bench`: prefill and decode latency of every available backend on the same weights.

Backends are timed alternately in one loop (eager, HF, ONNX Runtime, ...; then again), after warm-up, and
reported as medians with tokens per second, so a noisy machine slows them alike. A decode step is one new token
per row on `context` cached tokens; the cache is rebuilt from the same prefix for every timed step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jetmoe import checkpoint as ckpt
from jetmoe.config import JetMoeConfig
from jetmoe.errors import CheckpointError, InputError
from jetmoe.model import JetMoeForCausalLM


@dataclasses.dataclass
class Timing:
    backend: str
    case: str  # "prefill" or "decode"
    batch: int
    tokens: int  # prefill: prompt tokens per row; decode: cached tokens
    median_ms: float
    tokens_per_s: float
    reps: int


@dataclasses.dataclass
class BenchReport:
    checkpoint: str
    threads: int
    unavailable: dict[str, str]
    timings: list[Timing]

    def table(self) -> str:
        lines = [f"{'backend':<16} {'case':<8} {'batch':>5} {'tokens':>6} {'median ms':>10} {'tokens/s':>10}"]
        for t in self.timings:
            lines.append(f"{t.backend:<16} {t.case:<8} {t.batch:>5} {t.tokens:>6} {t.median_ms:>10.2f} "
                         f"{t.tokens_per_s:>10.1f}")
        lines += [f"{name:<16} unavailable: {why}" for name, why in self.unavailable.items()]
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> None:
        ckpt.atomic_write_text(Path(path), json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    def plot(self, path: str | os.PathLike) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'jetmoe-trt[plot]'") from None
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, case in zip(axes, ("prefill", "decode")):
            for backend in sorted({t.backend for t in self.timings}):
                points = sorted((t.batch, t.tokens_per_s) for t in self.timings if t.backend == backend
                                and t.case == case)
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=backend)
            ax.set(title=case, xlabel="batch", ylabel="tokens / s", xscale="log", yscale="log")
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)


def bench(checkpoint: str | os.PathLike, onnx: str | os.PathLike | None = None,
          engine: str | os.PathLike | None = None, *, batches: tuple[int, ...] = (1,),
          prompt_tokens: int = 128, context: int = 128, reps: int = 10, warmup: int = 2, hf: bool = True,
          threads: int | None = None, progress: bool = True) -> BenchReport:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint} does not exist")
    config = JetMoeConfig.from_pretrained(checkpoint)
    if prompt_tokens < 1 or context < 1 or context + 1 > config.max_position_embeddings:
        raise InputError(f"prompt tokens {prompt_tokens} and context {context} must be >= 1 and fit "
                         f"max_position_embeddings={config.max_position_embeddings}")
    if threads:
        torch.set_num_threads(threads)
    backends, unavailable = _backends(checkpoint, onnx, engine, hf, threads)
    timings = []
    for batch in batches:
        for case, tokens in (("prefill", prompt_tokens), ("decode", context)):
            runs = {name: make(case, batch, tokens, config) for name, make in backends.items()}
            if progress:
                print(f"[bench] {case}, batch {batch}, {tokens} tokens: {', '.join(runs)}", file=sys.stderr)
            times = _alternate(runs, reps, warmup)
            for name, samples in times.items():
                median = statistics.median(samples)
                produced = batch * (tokens if case == "prefill" else 1)
                timings.append(Timing(name, case, batch, tokens, median * 1e3, produced / median, reps))
    return BenchReport(str(checkpoint), torch.get_num_threads(), unavailable, timings)


def _alternate(runs: dict[str, Callable[[], None]], reps: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for run in runs.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return samples


# ---- backends: each makes a timed callable for (case, batch, tokens) --------------------------------------


def _backends(checkpoint: Path, onnx, engine, hf: bool, threads: int | None):
    backends: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    model = JetMoeForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    backends["eager"] = lambda case, b, n, config: _torch_run(model, case, b, n, config, hf_api=False)
    if hf:
        try:
            import transformers

            hf_model = transformers.JetMoeForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
            backends["hf-eager"] = lambda case, b, n, config: _torch_run(hf_model, case, b, n, config, hf_api=True)
        except ImportError:
            unavailable["hf-eager"] = "transformers is not installed"
    if onnx is not None:
        try:
            from export.onnx_runtime import OnnxModel

            onnx_model = OnnxModel(onnx, threads=threads)
            backends["onnxruntime"] = lambda case, b, n, config: _step_run(onnx_model, case, b, n, config)
        except ImportError:
            unavailable["onnxruntime"] = "onnxruntime is not installed"
    if engine is None:
        unavailable["tensorrt"] = "no engine given (--engine)"
    else:
        from engines.errors import TensorRTUnavailable

        try:
            from engines.runtime import JetMoeEngine

            trt_engine = JetMoeEngine(engine)
            backends["tensorrt"] = lambda case, b, n, config: _step_run(trt_engine.step, case, b, n, config)
        except TensorRTUnavailable as e:
            unavailable["tensorrt"] = str(e)
    return backends, unavailable


def _ids(batch: int, tokens: int, config: JetMoeConfig) -> torch.Tensor:
    return torch.randint(3, config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))


def _torch_run(model, case: str, batch: int, tokens: int, config: JetMoeConfig, hf_api: bool) -> Callable[[], None]:
    ids = _ids(batch, tokens, config)
    if case == "prefill":
        def run() -> None:
            with torch.inference_mode():
                model(ids, use_cache=False)
        return run
    step = _ids(batch, 1, config)
    with torch.inference_mode():
        prefix = model(ids, use_cache=True)
    if hf_api:
        cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values

        def run() -> None:
            with torch.inference_mode():
                model(step, cache=cache, use_cache=True)
            cache.crop(-1)  # drop the step's token again (untimed cost is negligible)
        return run
    past = prefix.past_key_values.to_tuple()  # a fresh KVCache wraps it each call: the prefix stays as it is

    def run() -> None:
        with torch.inference_mode():
            model(step, past_key_values=past, use_cache=True)
    return run


def _step_run(step, case: str, batch: int, tokens: int, config: JetMoeConfig) -> Callable[[], None]:
    """A generation Step (ONNX Runtime's OnnxModel, TensorRT's JetMoeEngine): prefill, or one decode step on a
    cache made once from the same prefix."""
    ids = _ids(batch, tokens, config)
    mask = torch.ones_like(ids)
    positions = torch.arange(tokens).expand(batch, tokens)
    if case == "prefill":
        return lambda: step(ids, mask, positions, None)
    _, past = step(ids, mask, positions, None)
    token, mask = _ids(batch, 1, config), torch.ones(batch, tokens + 1, dtype=torch.long)
    position = torch.full((batch, 1), tokens)
    return lambda: step(token, mask, position, past)

