"""`jetmoe bench`: prefill and decode latency of every available backend on the same weights.

Backends are runners (jetmoe/runner.py) timed alternately in one loop by the harness (validate/timing.py), after
warm-up, and reported as medians with tokens per second, so a noisy machine slows them alike. HF transformers'
eager model (a peer, not one of ours) is timed through its own API. A decode step is one new token per row on
`context` cached tokens, always from the same cache (runners treat the cache as a value).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engines.runtime import TrtRunner
from export.manifest import read_manifest
from export.onnx_runtime import OnnxrtRunner
from jetmoe.config import JetMoeConfig
from jetmoe.errors import CheckpointError, InputError, Unavailable
from jetmoe.fileio import atomic_write_text
from jetmoe.model import JetMoeForCausalLM
from jetmoe.runner import EagerRunner, Runner
from validate.timing import alternate
from validate.validator import check_same_model

log = logging.getLogger(__name__)


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
        atomic_write_text(Path(path), json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    def plot(self, path: str | os.PathLike) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'jetmoe-trt[plot]'") from None
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, case in zip(axes, ("prefill", "decode"), strict=True):
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
          threads: int | None = None) -> BenchReport:
    """Time prefill (`prompt_tokens`) and one decode step (on `context` cached tokens) per batch size."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint} does not exist")
    config = JetMoeConfig.from_pretrained(checkpoint)
    for name, value, low in (("reps", reps, 1), ("warmup", warmup, 0), ("prompt_tokens", prompt_tokens, 1),
                             ("context", context, 1)):
        if not isinstance(value, int) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads}")
    if not batches or any(b < 1 for b in batches):
        raise InputError(f"batch sizes must be positive integers, got {list(batches)}")
    if max(prompt_tokens, context + 1) > config.max_position_embeddings:
        raise InputError(f"prompt tokens {prompt_tokens} and context {context} must be >= 1 and fit "
                         f"max_position_embeddings={config.max_position_embeddings}")
    if onnx is not None:
        check_same_model(config, read_manifest(onnx).model_config, Path(onnx))
    if threads:
        torch.set_num_threads(threads)
    backends, unavailable, active = _backends(checkpoint, onnx, engine, hf, threads)
    timings = []
    try:
        for batch in batches:
            for case, tokens in (("prefill", prompt_tokens), ("decode", context)):
                runs = {name: make(case, batch, tokens, config) for name, make in backends.items()}
                log.info("[bench] %s, batch %d, %d tokens: %s", case, batch, tokens, ", ".join(runs))
                times = alternate(runs, reps, warmup)
                for name, samples in times.items():
                    median = statistics.median(samples)
                    produced = batch * (tokens if case == "prefill" else 1)
                    timings.append(Timing(name, case, batch, tokens, median * 1e3, produced / median, reps))
    finally:
        for runner in active:
            runner.deactivate()
    return BenchReport(str(checkpoint), torch.get_num_threads(), unavailable, timings)


# ---- backends: each makes a timed callable for (case, batch, tokens) --------------------------------------

def _backends(checkpoint: Path, onnx, engine, hf: bool, threads: int | None):
    backends: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    active: list[Runner] = []
    runners: dict[str, Runner] = {"eager": EagerRunner(JetMoeForCausalLM.from_pretrained(checkpoint, dtype="fp32"))}
    if hf:
        try:
            import transformers

            hf_model = transformers.JetMoeForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
            backends["hf-eager"] = lambda case, b, n, config: _hf_run(hf_model, case, b, n, config)
        except ImportError:
            unavailable["hf-eager"] = "transformers is not installed"
    if onnx is not None:
        runners["onnxruntime"] = OnnxrtRunner(onnx, threads=threads)
    if engine is None:
        unavailable["tensorrt"] = "no engine given (--engine)"
    else:
        runners["tensorrt"] = TrtRunner(engine)
    for name, runner in runners.items():
        try:
            runner.activate()
        except Unavailable as e:
            unavailable[name] = str(e)
            continue
        active.append(runner)
        backends[name] = lambda case, b, n, config, runner=runner: _runner_run(runner, case, b, n, config)
    return dict(sorted(backends.items(), key=lambda kv: kv[0] != "eager")), unavailable, active


def _ids(batch: int, tokens: int, config: JetMoeConfig) -> torch.Tensor:
    return torch.randint(3, config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))


def _runner_run(runner: Runner, case: str, batch: int, tokens: int, config: JetMoeConfig) -> Callable[[], None]:
    """Prefill, or one decode step on a cache made once from the same prefix (the cache is a value)."""
    ids = _ids(batch, tokens, config)
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "position_ids": torch.arange(tokens).expand(batch, tokens), **runner.empty_past(batch)}
    if case == "prefill":
        return lambda: runner.infer(feeds)
    past = runner.carry_past(runner.infer(feeds))
    step = {"input_ids": _ids(batch, 1, config), "attention_mask": torch.ones(batch, tokens + 1, dtype=torch.long),
            "position_ids": torch.full((batch, 1), tokens), **past}
    return lambda: runner.infer(step)


def _hf_run(model, case: str, batch: int, tokens: int, config: JetMoeConfig) -> Callable[[], None]:
    ids = _ids(batch, tokens, config)
    if case == "prefill":
        def run() -> None:
            with torch.inference_mode():
                model(ids, use_cache=False)
        return run
    step = _ids(batch, 1, config)
    with torch.inference_mode():
        prefix = model(ids, use_cache=True)
    cache = prefix.cache if hasattr(prefix, "cache") else prefix.past_key_values

    def run() -> None:
        with torch.inference_mode():
            model(step, cache=cache, use_cache=True)
        cache.crop(-1)  # drop the step's token again (untimed cost is negligible)
    return run
