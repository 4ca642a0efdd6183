"""`jetmoe`: one console command, one subcommand per stage. Each subcommand calls a typed function.

Exit codes: 0 success, 1 a `JetMoeError` (bad input, bad checkpoint: a one-line message, no traceback),
2 a usage error, or TensorRT / a CUDA GPU missing for `build` or an engine (a one-line message).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engines.errors import TensorRTUnavailable
from jetmoe.errors import InputError, JetMoeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jetmoe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("checkpoint", help="write a random HF-format JetMoe checkpoint (the embedded default)")
    p.add_argument("--preset", default="tiny", help="config preset: tiny, default or jetmoe-8b (default: tiny)")
    p.add_argument("-o", "--output", required=True, type=Path, help="checkpoint folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(run=_checkpoint)

    p = sub.add_parser("export", help="export a checkpoint folder to ONNX with custom jetmoe dispatch nodes")
    p.add_argument("checkpoint", type=Path, help="HF-format checkpoint folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to write model.onnx and export.json to")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16 (default: fp32)")
    p.add_argument("--task", default="causal-lm", help="causal-lm or sequence-classification")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 21)")
    p.add_argument("--validation-outputs", action="store_true",
                   help="also output router logits and per-layer hidden states (for the validator)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(run=_export)

    p = sub.add_parser("lint", help="check that an ONNX model only uses what TensorRT's parser supports")
    p.add_argument("model", type=Path, help="model.onnx")
    p.set_defaults(run=_lint)

    from engines.commands import add_build_parser

    add_build_parser(sub)

    p = sub.add_parser("generate", help="generate token ids: eager (checkpoint folder), ONNX Runtime (model.onnx) "
                                        "or TensorRT (model.engine)")
    p.add_argument("model", type=Path, help="HF-format checkpoint folder, an exported model.onnx, or a built "
                                            "model.engine")
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider for model.onnx: cpu or cuda")
    p.add_argument("--prompt-ids", action="append", default=[], metavar="IDS",
                   help="comma-separated token ids; repeat for a batch")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="text prompt (needs tokenizer.json in the folder and the tokenizers package)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: the checkpoint's)")
    p.add_argument("--stream", action="store_true", help="print each step's tokens as they are generated")
    p.set_defaults(run=_generate)

    p = sub.add_parser("validate", help="check an export (and engine) against the eager model; exit 1 on failure")
    p.add_argument("checkpoint", type=Path, help="the HF-format checkpoint folder the export was made from")
    p.add_argument("--onnx", type=Path, help="exported model.onnx (run in ONNX Runtime)")
    p.add_argument("--engine", type=Path, help="TensorRT engine (run where TensorRT and a GPU exist)")
    p.add_argument("--provider", action="append", default=None, metavar="NAME",
                   help="ONNX Runtime provider: cpu (default) or cuda; repeat for both")
    p.add_argument("--json", type=Path, help="write the full report as JSON here")
    p.add_argument("--decode-steps", type=int, default=4, help="decode steps after each prefill (default 4)")
    p.add_argument("--long-context", type=int, default=None,
                   help="tokens in the long-context case (default: max_position_embeddings - decode steps; 0: skip)")
    p.add_argument("--generation-tokens", type=int, default=16, help="greedy tokens compared (default 16)")
    p.add_argument("--tolerance", action="append", default=[], metavar="NAME=VALUE",
                   help="override a limit, e.g. logits_atol=1e-3 (see docs/validation.md)")
    p.add_argument("--polygraphy-dir", type=Path,
                   help="also save inputs.json and reference.json for an independent `polygraphy run` check")
    p.set_defaults(run=_validate)

    p = sub.add_parser("bench", help="prefill and decode latency of eager, HF eager, ONNX Runtime (and TensorRT)")
    p.add_argument("checkpoint", type=Path, help="HF-format checkpoint folder")
    p.add_argument("--onnx", type=Path, help="exported model.onnx of the same checkpoint")
    p.add_argument("--engine", type=Path, help="TensorRT engine built from that export")
    p.add_argument("--batch", type=int, action="append", default=None, help="batch size; repeat for several")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prefill length (default 128)")
    p.add_argument("--context", type=int, default=128, help="cached tokens for a decode step (default 128)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime")
    p.add_argument("--no-hf", action="store_true", help="leave out HF transformers' eager model")
    p.add_argument("--json", type=Path, help="write the timings as JSON here")
    p.add_argument("--plot", type=Path, help="write tokens/s against batch size as a picture (PNG) here")
    p.set_defaults(run=_bench)

    p = sub.add_parser("demo", help="the main job on the embedded default: random checkpoint, then generation")
    p.add_argument("--workdir", type=Path, default=Path("jetmoe-demo"), help="where to write (default: jetmoe-demo)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except TensorRTUnavailable as e:
        print(f"jetmoe {args.command}: unavailable here: {e}", file=sys.stderr)
        return 2
    except JetMoeError as e:
        print(f"jetmoe {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


def _checkpoint(args: argparse.Namespace) -> None:
    from jetmoe.config import JetMoeConfig
    from jetmoe.random_weights import write_random_checkpoint

    config = JetMoeConfig.from_preset(args.preset)
    out = write_random_checkpoint(args.output, config, seed=args.seed, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote random {args.preset} checkpoint (seed {args.seed}, {args.dtype}) to {out}")


def _export(args: argparse.Namespace) -> None:
    from export.exporter import DEFAULT_OPSET, export_checkpoint

    export_checkpoint(args.checkpoint, args.output, dtype=args.dtype, task=args.task,
                      opset=args.opset or DEFAULT_OPSET, validation_outputs=args.validation_outputs,
                      overwrite=args.overwrite)


def _lint(args: argparse.Namespace) -> None:
    import onnx

    from export.lint import lint_model

    if not args.model.is_file():
        raise InputError(f"no ONNX model at {args.model}")
    report = lint_model(onnx.load(args.model, load_external_data=False))
    print(report)
    if not report:
        raise LintFailed(f"{len(report.issues)} problem(s) in {args.model}")


class LintFailed(JetMoeError):
    pass


def _generate(args: argparse.Namespace) -> None:
    if not args.prompt_ids and not args.prompt:
        raise InputError("give at least one --prompt-ids or --prompt")
    folder = args.model.parent if args.model.suffix in (".onnx", ".engine") else args.model
    tokenizer = _tokenizer(folder) if args.prompt else None
    prompts = [parse_token_ids(text) for text in args.prompt_ids]
    prompts += [tokenizer.encode(text).ids for text in args.prompt] if tokenizer else []
    if args.model.suffix == ".onnx":
        from export.onnx_runtime import OnnxModel

        providers = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
        if args.provider not in providers:
            raise InputError(f"--provider {args.provider!r} is not one of {sorted(providers)}")
        model = OnnxModel(args.model, providers=providers[args.provider])
    elif args.model.suffix == ".engine":
        from engines.commands import engine_model

        model = engine_model(args.model)
    else:
        from jetmoe.model import JetMoeForCausalLM

        model = JetMoeForCausalLM.from_pretrained(args.model, dtype=args.dtype, progress=True)
    streamer = (lambda tokens: print(" ".join("-" if t is None else str(t) for t in tokens), flush=True)
                if args.stream else None)
    outputs = model.generate(prompts, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                             streamer=streamer)
    for tokens in outputs:
        print(",".join(map(str, tokens)))
        if tokenizer is not None:
            print(tokenizer.decode(tokens))


def _validate(args: argparse.Namespace) -> None:
    from validate.validator import validate_export

    overrides = {}
    for item in args.tolerance:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--tolerance {item!r} is not NAME=VALUE")
        overrides[key] = value
    report = validate_export(args.checkpoint, onnx=args.onnx, engine=args.engine,
                             providers=tuple(args.provider or ["cpu"]), decode_steps=args.decode_steps,
                             long_context=args.long_context, generation_tokens=args.generation_tokens,
                             tolerance_overrides=overrides, polygraphy_dir=args.polygraphy_dir)
    print(report.table())
    if args.json:
        report.save(args.json)
    if not report:
        raise ValidationFailed("the backends under test do not match the eager model (see the table above)")


class ValidationFailed(JetMoeError):
    pass


def _bench(args: argparse.Namespace) -> None:
    from validate.bench import bench

    report = bench(args.checkpoint, args.onnx, args.engine, batches=tuple(args.batch or [1]), prompt_tokens=args.prompt_tokens,
                   context=args.context, reps=args.reps, hf=not args.no_hf, threads=args.threads)
    print(report.table())
    if args.json:
        report.save(args.json)
    if args.plot:
        report.plot(args.plot)


def _demo(args: argparse.Namespace) -> None:
    from jetmoe.demo import run_demo

    run_demo(args.workdir, seed=args.seed)


def parse_token_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--prompt-ids {text!r} is not a comma-separated list of integers") from None
    if not ids:
        raise InputError(f"--prompt-ids {text!r} holds no token ids")
    return ids


def _tokenizer(folder: Path):
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"--prompt needs {path}; use --prompt-ids with this checkpoint")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("--prompt needs the tokenizers package: pip install 'jetmoe-trt[text]'") from None
    return Tokenizer.from_file(str(path))



if __name__ == "__main__":
    sys.exit(main())
