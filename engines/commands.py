"""The `jetmoe build` subcommand and the engine branch of `jetmoe generate`, kept here so that jetmoe/cli.py
only wires them in. Defaults live in `engines.builder.build_engine` (None = "the function's default")."""

from __future__ import annotations

import argparse
from pathlib import Path

EXIT_UNAVAILABLE = 2  # TensorRT or a GPU is missing: like a usage error, nothing to retry on this machine


def add_build_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("build", help="build a TensorRT engine from an exported model.onnx (needs TensorRT and a GPU)")
    p.add_argument("onnx", type=Path, help="model.onnx written by `jetmoe export` (export.json beside it)")
    p.add_argument("-o", "--output", required=True, type=Path, help="engine file to write (and <engine>.json)")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch (default 1)")
    p.add_argument("--max-seq", type=int, default=None,
                   help="most tokens in the cache, prompt + generated (default: max_position_embeddings)")
    p.add_argument("--opt-batch", type=int, default=None, help="batch to tune for (default: --max-batch)")
    p.add_argument("--opt-seq", type=int, default=None, help="prompt length to tune for (default: max-seq / 2)")
    p.add_argument("--opt-past", type=int, default=None, help="cached tokens to tune decode for (default: max-seq / 2)")
    p.add_argument("--dtype", default=None, help="refuse to build unless the ONNX has this precision (fp32/fp16/bf16)")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file to reuse and update")
    p.add_argument("--builder-optimization-level", type=int, default=None, help="0..5 (TensorRT's default: 3)")
    p.add_argument("--plugin-mode", default="aot", choices=("aot", "jit"),
                   help="aot: Triton PTX embedded, runs without Python (trtexec); jit: calls back into Python")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine")
    p.set_defaults(run=run_build)
    return p


def run_build(args: argparse.Namespace) -> None:
    from engines.builder import build_engine

    build_engine(args.onnx, args.output, max_batch=args.max_batch, max_seq=args.max_seq, opt_batch=args.opt_batch,
                 opt_seq=args.opt_seq, opt_past=args.opt_past, dtype=args.dtype, timing_cache=args.timing_cache,
                 builder_optimization_level=args.builder_optimization_level, plugin_mode=args.plugin_mode,
                 overwrite=args.overwrite)


def engine_model(path: Path):
    """For `jetmoe generate model.engine`: an object with the eager model's `generate(prompts, **options)`."""
    from engines.runtime import JetMoeEngine

    return JetMoeEngine(path)
