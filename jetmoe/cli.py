"""`jetmoe`: one console command, one subcommand per stage; each subcommand calls one typed library function.

An entry point: it may import every layer (docs/architecture.md). Flag defaults are read from the called
function's signature (`_flag`), so each default is written once, where the function is, and `--help` shows it.

Exit codes: 0 success; 1 a JetMoeError (bad input, a refused output, a failed validation: one line on stderr,
no traceback); 2 a usage error, or a backend that cannot run here (TensorRT, a GPU, ONNX Runtime missing);
130 interrupted (Ctrl-C or SIGTERM: nothing half-written is left behind). stdout carries only results.
"""

from __future__ import annotations

import argparse
import inspect
import signal
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from jetmoe import dtypes, log
from jetmoe.errors import InputError, JetMoeError, LintFailed, Unavailable, ValidationFailed

EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 1, 2, 130
INT64_MAX = 2**63 - 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(args.verbose - args.quiet)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        args.run(args)
    except Unavailable as e:
        print(f"jetmoe {args.command}: unavailable here: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except JetMoeError as e:
        print(f"jetmoe {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"jetmoe {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out


# ---- the parser ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from engines.builder import build_engine, plan_build
    from engines.plugin_kernels import emit_ptx
    from export.exporter import export_checkpoint
    from export.quantize import EXPERT_GROUPS, SCHEMES, quantize_export
    from jetmoe.generate import generate
    from jetmoe.model import TASKS
    from jetmoe.random_weights import write_random_checkpoint
    from validate.bench import bench
    from validate.demo import run_demo
    from validate.validator import validate_export

    parser = argparse.ArgumentParser(prog="jetmoe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"jetmoe-trt {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr")
    common.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, run: Callable) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=_Help)
        p.set_defaults(run=run)
        return p

    p = command("checkpoint", "write a random HF-format JetMoe checkpoint folder (config.json, safetensors "
                "shards and their index)", _checkpoint)
    p.add_argument("--preset", default="tiny", help="config preset: tiny, default or jetmoe-8b")
    p.add_argument("-o", "--output", required=True, type=Path, help="checkpoint folder to create")
    _flag(p, write_random_checkpoint, "--seed", type=int, help="random seed (same seed, same weights)")
    _flag(p, write_random_checkpoint, "--dtype", type=_float_type, help="fp32, fp16 or bf16 (default: the preset's)")
    _flag(p, write_random_checkpoint, "--task", choices=sorted(TASKS), help="the model head")
    _flag(p, write_random_checkpoint, "--max-shard-size", type=_byte_size, metavar="SIZE",
          help="bytes per shard file, or with a unit (500MB, 2GB, 4GiB); above it: shards and their index")
    _flag(p, write_random_checkpoint, "--overwrite", help="replace an earlier checkpoint folder")

    p = command("export", "export a checkpoint to ONNX: writes model.onnx, model.onnx.data (the weights) and "
                "export.json in the output folder, and for other tools (onnxruntime-genai, HF Optimum; "
                "docs/ecosystem.md) config.json, generation_config.json, genai_config.json and the checkpoint's "
                "tokenizer files", _export)
    p.add_argument("checkpoint", type=Path, help="HF-format checkpoint folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to create")
    _flag(p, export_checkpoint, "--dtype", type=_float_type, help="fp32, fp16 or bf16")
    _flag(p, export_checkpoint, "--task", choices=sorted(TASKS), help="the model head")
    _flag(p, export_checkpoint, "--opset", type=int, help="ONNX opset")
    _flag(p, export_checkpoint, "--validation-outputs",
          help="also output router logits and per-layer hidden states (for the validator)")
    _flag(p, export_checkpoint, "--dispatch", choices=("plugin", "portable"),
          help="plugin: jetmoe nodes for TensorRT's plugins; portable: standard ONNX ops only (TensorRT-RTX, "
               "TensorRT without plugins)")
    _flag(p, export_checkpoint, "--overwrite", help="replace an earlier export folder")

    p = command("quantize", "integer experts for ONNX Runtime CPU: writes a copy of an fp32/fp16 plugin-dispatch "
                "export with its expert matmuls quantized, routers float (ONNX Runtime only, not TensorRT)", _quantize)
    p.add_argument("export", type=Path, help="export folder (or its model.onnx) written by `jetmoe export`")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to create")
    _flag(p, quantize_export, "--scheme", choices=sorted(SCHEMES),
          help="int8-weight-only (MatMulNBits), int4-weight-only or int8-dynamic (MatMulInteger)")
    _flag(p, quantize_export, "--experts", nargs="+", choices=sorted(EXPERT_GROUPS),
          help="expert groups to quantize: mlp (MoE), attention (MoA)")
    _flag(p, quantize_export, "--overwrite", help="replace an earlier quantized folder")

    p = command("lint", "check that an ONNX model only uses what TensorRT's parser supports: TensorRT's (or "
                "TensorRT-RTX's) own parser, node by node, where importable, else the transcribed operator table",
                _lint)
    p.add_argument("model", type=Path, help="model.onnx (or its export folder)")

    p = command("build", "build a TensorRT engine from an exported model.onnx: writes the engine and "
                "<engine>.json (full TensorRT needs a GPU)", _build)
    p.add_argument("onnx", type=Path, help="model.onnx written by `jetmoe export` (export.json beside it)")
    p.add_argument("-o", "--output", required=True, type=Path, help="engine file to write")
    _flag(p, plan_build, "--max-batch", type=int, help="largest batch")
    _flag(p, plan_build, "--max-seq", type=int, help="most tokens in the cache (default: max_position_embeddings)")
    _flag(p, plan_build, "--opt-batch", type=int, help="batch to tune for (default: --max-batch)")
    _flag(p, plan_build, "--opt-seq", type=int, help="prompt length to tune for (default: max-seq / 2)")
    _flag(p, plan_build, "--opt-past", type=int, help="cached tokens to tune decode for (default: max-seq / 2)")
    _flag(p, plan_build, "--dtype", type=_float_type, help="refuse to build unless the ONNX has this precision")
    _flag(p, plan_build, "--plugin-mode", choices=("aot", "jit"),
          help="aot: Triton PTX embedded, runs without Python (trtexec); jit: calls back into Python")
    _flag(p, plan_build, "--backend", choices=("tensorrt", "tensorrt-rtx"),
          help="full TensorRT (H100/H200, plugin or portable exports) or TensorRT-RTX (portable exports)")
    _flag(p, plan_build, "--compute-capability", action="append", type=str, metavar="X.Y",
          help="TensorRT-RTX target (repeatable; default 8.6)")
    _flag(p, build_engine, "--timing-cache", type=Path, help="timing cache file to reuse and update")
    _flag(p, build_engine, "--builder-optimization-level", type=int, help="0..5 (default: TensorRT's, 3)")
    _flag(p, plan_build, "--overwrite", help="replace an existing engine")

    p = command("plugins", "write every AOT plugin kernel's PTX (one .ptx per op, dtype, index dtype and tactic) "
                "and index.json (launch facts) to a folder; needs triton, neither TensorRT nor a GPU", _plugins)
    p.add_argument("--emit-ptx", type=Path, required=True, metavar="DIR", help="folder to write")
    _flag(p, emit_ptx, "--arch", type=int, help="compute capability as an int (90: H100/H200)")
    p.add_argument("--ptx-isa", default=None, metavar="X.Y", help="PTX ISA to emit (default: 8.0, or the "
                   "target's minimum where newer); check against a driver's toolkit with `ptxas -arch=sm_90a`")
    _flag(p, emit_ptx, "--overwrite", help="replace an earlier PTX folder")

    p = command("generate", "generate token ids: eager (checkpoint folder), ONNX Runtime (model.onnx) or TensorRT "
                "(model.engine); prints one line of comma-separated ids per prompt", _generate)
    p.add_argument("model", type=Path, help="checkpoint folder, an export (folder or model.onnx), or an engine")
    p.add_argument("--prompt-ids", action="append", default=[], metavar="IDS",
                   help="comma-separated token ids; repeat for a batch")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="text prompt (needs tokenizer.json beside the model and the tokenizers package)")
    _flag(p, generate, "--max-new-tokens", type=int, help="new tokens per prompt")
    _flag(p, generate, "--sample", param="do_sample", help="sample instead of greedy decoding")
    _flag(p, generate, "--temperature", type=float)
    _flag(p, generate, "--top-k", type=int, help="keep the k most likely tokens (0: all)")
    _flag(p, generate, "--top-p", type=float, help="keep the smallest set holding this much probability")
    _flag(p, generate, "--seed", type=int, help="sampling seed")
    p.add_argument("--dtype", type=_float_type, default=None,
                   help="eager: compute in this type (default: the checkpoint's); ONNX/engine: must be its dtype")
    p.add_argument("--provider", default="cpu", choices=("cpu", "cuda"), help="ONNX Runtime provider")
    p.add_argument("--stream", action="store_true", help="print each token as it is generated (one prompt)")

    p = command("validate", "check an export (and an engine) against the eager model; exit 1 on a mismatch",
                _validate)
    p.add_argument("checkpoint", type=Path, help="the checkpoint folder the export was made from")
    _flag(p, validate_export, "--onnx", type=Path, help="exported model.onnx (run in ONNX Runtime)")
    _flag(p, validate_export, "--engine", type=Path, help="TensorRT engine (needs TensorRT and a GPU)")
    p.add_argument("--provider", action="append", default=None, choices=("cpu", "cuda"),
                   help="ONNX Runtime provider; repeat for both (default: cpu)")
    p.add_argument("--json", type=Path, help="write the full report as JSON here")
    _flag(p, validate_export, "--decode-steps", type=int, help="decode steps after each prefill")
    _flag(p, validate_export, "--long-context", type=int,
          help="tokens in the long-context case (default: max_position_embeddings - decode steps; 0: skip)")
    _flag(p, validate_export, "--generation-tokens", type=int, help="greedy tokens compared")
    p.add_argument("--tolerance", action="append", default=[], metavar="NAME=VALUE",
                   help="override a limit, e.g. logits_atol=1e-3 (see docs/validation.md)")
    _flag(p, validate_export, "--polygraphy-dir", type=Path,
          help="also save inputs.json and reference.json for an independent `polygraphy run` check")

    p = command("bench", "prefill and decode latency of eager, HF eager, ONNX Runtime (and TensorRT)", _bench)
    p.add_argument("checkpoint", type=Path, help="HF-format checkpoint folder")
    _flag(p, bench, "--onnx", type=Path, help="exported model.onnx of the same checkpoint")
    _flag(p, bench, "--engine", type=Path, help="TensorRT engine built from that export")
    p.add_argument("--batch", type=int, action="append", default=None, help="batch size; repeat (default: 1)")
    _flag(p, bench, "--prompt-tokens", type=int, help="prefill length")
    _flag(p, bench, "--context", type=int, help="cached tokens for a decode step")
    _flag(p, bench, "--reps", type=int, help="timed repetitions")
    _flag(p, bench, "--threads", type=int, help="CPU threads for torch and ONNX Runtime (default: all)")
    p.add_argument("--no-hf", action="store_true", help="leave out HF transformers' eager model")
    p.add_argument("--json", type=Path, help="write the timings as JSON here")
    p.add_argument("--plot", type=Path, help="write tokens/s against batch size as a picture (PNG) here")

    p = command("demo", "the main job on the embedded default: a random tiny checkpoint, its ONNX export, "
                "validation against eager, and generation (all under --workdir)", _demo)
    _flag(p, run_demo, "--workdir", type=Path, help="where to write (its earlier demo results are replaced)")
    _flag(p, run_demo, "--seed", type=int)
    return parser


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where there is a default worth showing (not None, False, a count, or one the help
    text already states)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        quiet = (action.default in (None, False) or action.required or isinstance(action, argparse._CountAction)
                 or "default:" in (action.help or ""))
        return action.help if quiet else super()._get_help_string(action)


def _flag(parser: argparse.ArgumentParser, fn: Callable, flag: str, param: str | None = None, **options) -> None:
    """Add `flag` for parameter `param` of `fn` (default: the flag's name), with fn's default."""
    param = param or flag.lstrip("-").replace("-", "_")
    default = inspect.signature(fn).parameters[param].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{fn.__name__}() has no default for {param}")
    if isinstance(default, bool) and "action" not in options:
        options["action"] = "store_true"
    if options.get("action") == "append":
        default = None if not default else list(default)
    parser.add_argument(flag, dest=param, default=default, **options)


def _float_type(text: str) -> str:
    try:
        return dtypes.float_dtype(text).name
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _version() -> str:
    try:
        return version("jetmoe-trt")
    except PackageNotFoundError:
        return "unknown"


# ---- the subcommands ----------------------------------------------------------------------------------------


def _checkpoint(args: argparse.Namespace) -> None:
    from jetmoe.config import JetMoeConfig
    from jetmoe.random_weights import write_random_checkpoint

    config = JetMoeConfig.from_preset(args.preset)
    out = write_random_checkpoint(args.output, config, seed=args.seed, dtype=args.dtype, task=args.task,
                                  overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    print(out)


_BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _byte_size(text: str) -> int:
    """Bytes from 5368709120, 500MB, 2GB or 4GiB (GB = 10^9, as HF's max_shard_size; GiB = 2^30)."""
    number = text.strip().rstrip("bBiIkKmMgG")
    unit = text.strip()[len(number):].upper()
    try:
        size = int(float(number) * _BYTE_UNITS[unit])
    except (KeyError, ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: bytes, or a number with KB, MB, GB, KiB, MiB "
                                         f"or GiB") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a shard holds at least one byte")
    return size


def _export(args: argparse.Namespace) -> None:
    from engines.lint import lint_file
    from export.exporter import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.output, dtype=args.dtype, task=args.task, opset=args.opset,
                             validation_outputs=args.validation_outputs, dispatch=args.dispatch,
                             overwrite=args.overwrite, lint=lint_file)
    print(path)


def _quantize(args: argparse.Namespace) -> None:
    from export.quantize import quantize_export

    path = quantize_export(args.export, args.output, scheme=args.scheme, experts=tuple(args.experts),
                           overwrite=args.overwrite)
    print(path)


def _lint(args: argparse.Namespace) -> None:
    from engines.lint import lint_file
    from export.manifest import model_path

    report = lint_file(model_path(args.model))
    print(report)
    if not report:
        raise LintFailed(f"{len(report.issues)} problem(s) in {args.model} ({report.check})")


def _build(args: argparse.Namespace) -> None:
    from engines.builder import build_engine

    manifest = build_engine(args.onnx, args.output, max_batch=args.max_batch, max_seq=args.max_seq,
                            opt_batch=args.opt_batch, opt_seq=args.opt_seq, opt_past=args.opt_past,
                            dtype=args.dtype, plugin_mode=args.plugin_mode, backend=args.backend,
                            compute_capability=tuple(args.compute_capability or ()), overwrite=args.overwrite,
                            timing_cache=args.timing_cache, builder_optimization_level=args.builder_optimization_level)
    print(f"{args.output} ({manifest.backend} {manifest.tensorrt_version}, {manifest.dtype})")


def _plugins(args: argparse.Namespace) -> None:
    import importlib.util
    import os

    from engines.kernels.aot import MIN_PTX_ISA
    from engines.plugin_kernels import emit_ptx

    if importlib.util.find_spec("triton") is None:
        raise Unavailable("emitting PTX needs triton: pip install triton (no GPU needed)")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise InputError("unset TRITON_INTERPRET: the interpreter cannot compile kernels to PTX")
    if args.arch not in MIN_PTX_ISA:
        raise InputError(f"--arch {args.arch}: not one of {sorted(MIN_PTX_ISA)}")
    isa = None
    if args.ptx_isa is not None:
        major, _, minor = args.ptx_isa.partition(".")
        if not (major.isdigit() and minor.isdigit() and len(minor) == 1):
            raise InputError(f"--ptx-isa {args.ptx_isa!r}: expected X.Y, e.g. 8.0")
        isa = int(major) * 10 + int(minor)
    try:
        index = emit_ptx(args.emit_ptx, arch=args.arch, isa=isa, overwrite=args.overwrite)
    except ValueError as e:  # an ISA the target does not support
        raise InputError(str(e)) from None
    print(f"{args.emit_ptx}: {len(index['kernels'])} kernels, PTX {index['ptx_isa']}, sm_{index['arch']}")


def _generate(args: argparse.Namespace) -> None:
    from jetmoe.generate import check_generation, generate

    if not args.prompt_ids and not args.prompt:
        raise InputError("give at least one --prompt-ids or --prompt")
    runner, config, folder = _runner_for(args.model, args.dtype, args.provider)
    tokenizer = _tokenizer(folder) if args.prompt else None
    prompts = [parse_token_ids(text) for text in args.prompt_ids]
    prompts += [tokenizer.encode(text).ids for text in args.prompt] if tokenizer else []
    if args.stream and len(prompts) > 1:
        raise InputError(f"--stream prints one prompt's tokens as they come; got {len(prompts)} prompts")
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p)
    check_generation(config, prompts, **options)  # before any weight is loaded
    streamer = _Streamer() if args.stream else None
    with runner:
        outputs = generate(runner, prompts, seed=args.seed, streamer=streamer, **options)
    for tokens in outputs:
        if streamer is None:
            print(",".join(map(str, tokens)))
        else:
            print(flush=True)  # ends the streamed line: the same "id,id,id" line as without --stream
        if tokenizer is not None:
            print(tokenizer.decode(tokens))


class _Streamer:
    """Prints one prompt's new token ids as they come, comma-separated on one line."""

    def __init__(self) -> None:
        self.separator = ""

    def __call__(self, tokens: list[int | None]) -> None:
        if tokens[0] is not None:
            print(f"{self.separator}{tokens[0]}", end="", flush=True)
            self.separator = ","


def _runner_for(path: Path, dtype: str | None, provider: str):
    """The runner for a checkpoint folder, an export (folder or model.onnx) or an engine; its config (read
    without loading weights) and the folder holding a tokenizer."""
    from export.manifest import MANIFEST_NAME, read_manifest
    from jetmoe.config import CONFIG_NAME, JetMoeConfig

    if path.suffix == ".engine":
        from engines.runtime import TrtRunner

        runner = TrtRunner(path)
        _same_dtype(dtype, runner.manifest.dtype, path)
        return runner, runner.manifest.model_config, path.parent
    if path.suffix == ".onnx" or (path.is_dir() and (path / MANIFEST_NAME).is_file()):
        from export.onnx_runtime import OnnxrtRunner

        manifest = read_manifest(path)
        _same_dtype(dtype, manifest.dtype, path)
        runner = OnnxrtRunner(path, provider=provider)
        return runner, manifest.model_config, runner.path.parent
    if not path.is_dir():
        raise InputError(f"{path} does not exist" if not path.exists() else
                         f"{path} is not a checkpoint folder, an export or an engine")
    from jetmoe.model import JetMoeForCausalLM
    from jetmoe.runner import EagerRunner

    config = JetMoeConfig.from_pretrained(path) if (path / CONFIG_NAME).is_file() else None
    if config is None:
        raise InputError(f"{path} holds no config.json: not a checkpoint folder")
    runner = EagerRunner(lambda: _eager_model(JetMoeForCausalLM.from_pretrained(path, dtype=dtype, progress=True)))
    return runner, config, path


def _eager_model(model):
    import torch

    if torch.cuda.is_available():
        from engines.kernels import register_cuda_kernels

        register_cuda_kernels()
    return model


def _same_dtype(asked: str | None, actual: str, path: Path) -> None:
    if asked is not None and asked != actual:
        raise InputError(f"{path} runs in {actual}; --dtype {asked} applies to checkpoints (re-export to change it)")


def _validate(args: argparse.Namespace) -> None:
    from jetmoe.fileio import check_output
    from validate.validator import validate_export

    overrides = {}
    for item in args.tolerance:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--tolerance {item!r} is not NAME=VALUE")
        overrides[key] = value
    if args.json is not None:
        check_output(args.json, kind="file", overwrite=True, inputs=[args.checkpoint])
    report = validate_export(args.checkpoint, onnx=args.onnx, engine=args.engine,
                             providers=tuple(args.provider or ["cpu"]), decode_steps=args.decode_steps,
                             long_context=args.long_context, generation_tokens=args.generation_tokens,
                             tolerance_overrides=overrides, polygraphy_dir=args.polygraphy_dir)
    print(report.table())
    if args.json:
        report.save(args.json)
    if not report and all(b.passed for b in report.backends if b.available) and report.unavailable:
        raise Unavailable(f"{', '.join(b.name for b in report.unavailable)} could not run here "
                          f"({report.unavailable[0].reason}); validation is incomplete")
    if not report:
        raise ValidationFailed("the backends under test do not match the eager model (see the table above)")


def _bench(args: argparse.Namespace) -> None:
    from jetmoe.fileio import check_output
    from validate.bench import bench

    for path in (args.json, args.plot):
        if path is not None:
            check_output(path, kind="file", overwrite=True, inputs=[args.checkpoint])
    report = bench(args.checkpoint, args.onnx, args.engine, batches=tuple(args.batch or [1]),
                   prompt_tokens=args.prompt_tokens, context=args.context, reps=args.reps, hf=not args.no_hf,
                   threads=args.threads)
    print(report.table())
    if args.json:
        report.save(args.json)
    if args.plot:
        report.plot(args.plot)


def _demo(args: argparse.Namespace) -> None:
    from validate.demo import run_demo

    run_demo(args.workdir, seed=args.seed)


def parse_token_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--prompt-ids {text!r} is not a comma-separated list of integers") from None
    if not ids:
        raise InputError(f"--prompt-ids {text!r} holds no token ids")
    too_big = [i for i in ids if abs(i) > INT64_MAX]
    if too_big:
        raise InputError(f"token id {too_big[0]} in --prompt-ids does not fit a 64-bit integer")
    return ids


def _tokenizer(folder: Path):
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"--prompt needs {path}; use --prompt-ids with this model")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("--prompt needs the tokenizers package: pip install 'jetmoe-trt[text]'") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a corrupt file
        raise InputError(f"{path} is not a readable tokenizer: {str(e).splitlines()[0]}") from None


if __name__ == "__main__":
    sys.exit(main())
