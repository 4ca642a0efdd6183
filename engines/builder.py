"""Exported `model.onnx` -> TensorRT engine + `model.engine.json`, all or nothing.

    build_engine("out/model.onnx", "model.engine", max_batch=4, max_seq=1024)

Steps: check the request against export.json (plain Python, `plan_build`), register the `jetmoe` plugins,
parse with `trt.OnnxParser` (nodes carry `plugin_namespace`, so no parser flag is needed:
ENABLE_PLUGIN_OVERRIDE only matters for names that clash with builtin ONNX ops, and ours do not), add the
prefill and decode optimization profiles (engines/profiles.py), build with a progress monitor, reuse and save the
timing cache, then write the engine and its manifest atomically.

Precision is the ONNX's: TensorRT 11 networks are always strongly typed (no FP16/BF16 builder flags), and on
TensorRT 10 the STRONGLY_TYPED flag is set so both behave alike. Asking for another dtype than the export's is
refused: re-export instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engines.errors import EngineError, import_tensorrt, require_cuda_gpu
from engines.manifest import EngineManifest, read_export_manifest, write_manifest
from engines.profiles import Limits, Profile, make_profiles, resolve_limits
from export.io_names import IoNames
from jetmoe.config import JetMoeConfig
from jetmoe.checkpoint import atomic_write_bytes, file_sha256
from jetmoe.errors import InputError

PLUGIN_MODES = ("aot", "jit")
BF16_MIN_CC = (8, 0)


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Everything decided before TensorRT is touched."""

    onnx_path: Path
    engine_path: Path
    export: dict[str, Any]  # export.json
    config: JetMoeConfig
    names: IoNames
    dtype: str
    limits: Limits
    profiles: list[Profile]
    plugin_mode: str


def plan_build(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, max_batch: int = 1,
               max_seq: int | None = None, opt_batch: int | None = None, opt_seq: int | None = None,
               opt_past: int | None = None, dtype: str | None = None, plugin_mode: str = "aot",
               overwrite: bool = False) -> BuildPlan:
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise InputError(f"no ONNX model at {onnx_path}")
    if engine_path.exists() and not overwrite:
        raise InputError(f"{engine_path} exists; pass overwrite=True (--overwrite) to replace it")
    if not engine_path.parent.is_dir():
        raise InputError(f"folder {engine_path.parent} for the engine does not exist")
    if plugin_mode not in PLUGIN_MODES:
        raise InputError(f"plugin_mode {plugin_mode!r} is not one of {PLUGIN_MODES}")
    export = read_export_manifest(onnx_path)
    if dtype is not None and dtype != export["dtype"]:
        raise EngineError(f"{onnx_path} was exported in {export['dtype']}, but a {dtype} engine was asked for: "
                          f"TensorRT 11 builds in the ONNX's precision (strongly typed); re-export with "
                          f"`jetmoe export --dtype {dtype}`")
    recorded_sha = export["files"][onnx_path.name]
    if file_sha256(onnx_path) != recorded_sha:
        raise EngineError(f"{onnx_path} differs from the file export.json describes (sha256 {recorded_sha[:12]}...): "
                          f"it was modified after export; export again")
    config = JetMoeConfig.from_dict(export["config"])
    names = IoNames(config.num_hidden_layers, export["task"], export["validation_outputs"])
    recorded = [io["name"] for io in export["inputs"]]
    if recorded != names.inputs:
        raise EngineError(f"export.json lists inputs {recorded}, expected {names.inputs} for a {export['task']} "
                          f"export of {config.num_hidden_layers} layers")
    limits = resolve_limits(config, max_batch=max_batch, max_seq=max_seq, opt_batch=opt_batch, opt_seq=opt_seq,
                            opt_past=opt_past)
    return BuildPlan(onnx_path, engine_path, export, config, names, export["dtype"], limits,
                     make_profiles(config, names, limits), plugin_mode)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, max_batch: int = 1,
                 max_seq: int | None = None, opt_batch: int | None = None, opt_seq: int | None = None,
                 opt_past: int | None = None, dtype: str | None = None, timing_cache: str | os.PathLike | None = None,
                 builder_optimization_level: int | None = None, plugin_mode: str = "aot", overwrite: bool = False,
                 say: Callable[[str], None] = print) -> EngineManifest:
    """Build and write the engine and its manifest; return the manifest.

    plugin_mode "aot" embeds the Triton PTX in the engine (runs in trtexec / C++ without Python); "jit" calls
    back into Python (engines/plugins.py must be importable where the engine runs).
    """
    plan = plan_build(onnx_path, engine_path, max_batch=max_batch, max_seq=max_seq, opt_batch=opt_batch,
                      opt_seq=opt_seq, opt_past=opt_past, dtype=dtype, plugin_mode=plugin_mode, overwrite=overwrite)
    if builder_optimization_level is not None and builder_optimization_level not in range(6):
        raise InputError(f"builder_optimization_level must be 0..5, got {builder_optimization_level!r}")
    trt = import_tensorrt()
    gpu_name, cc = require_cuda_gpu()
    if plan.dtype == "bf16" and cc < BF16_MIN_CC:
        raise EngineError(f"a bf16 engine needs compute capability >= 8.0; {gpu_name} is {cc[0]}.{cc[1]}")
    from engines.plugins import plugin_versions, register_plugins

    register_plugins()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan.plugin_mode))
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {plan.onnx_path}")
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser refused {plan.onnx_path}: {errors}")
    _check_network(trt, network, plan, say)

    config = builder.create_builder_config()
    for profile in plan.profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            trt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(trt_profile)
    if builder_optimization_level is not None:
        config.builder_optimization_level = builder_optimization_level
    cache_path = Path(timing_cache) if timing_cache is not None else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = _progress_monitor(trt, say)

    say(f"building a {plan.dtype} engine for {gpu_name} (profiles: "
        f"{', '.join(p.name for p in plan.profiles)}; max batch {plan.limits.max_batch}, max seq {plan.limits.max_seq})")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build an engine from {plan.onnx_path} (see its log above)")
    data = bytes(serialized)
    say(f"built in {time.perf_counter() - start:.1f} s: {len(data) / 2**20:.1f} MiB")
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    manifest = EngineManifest(
        tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, dtype=plan.dtype,
        task=plan.names.task, validation_outputs=plan.names.validation_outputs, config=plan.export["config"],
        onnx_sha256=plan.export["files"][plan.onnx_path.name], plugins=plugin_versions(),
        plugin_mode=plan.plugin_mode, limits=plan.limits, profiles=plan.profiles,
        engine_sha256=hashlib.sha256(data).hexdigest())
    atomic_write_bytes(plan.engine_path, data)
    write_manifest(plan.engine_path, manifest)
    say(f"wrote {plan.engine_path} and its manifest")
    return manifest


def _network_flags(trt, plugin_mode: str) -> int:
    flags = 0
    kinds = trt.NetworkDefinitionCreationFlag
    if hasattr(kinds, "STRONGLY_TYPED"):  # ignored (always on) in TensorRT 11, needed in 10
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    prefer = {"aot": "PREFER_AOT_PYTHON_PLUGINS", "jit": "PREFER_JIT_PYTHON_PLUGINS"}[plugin_mode]
    if not hasattr(kinds, prefer):
        raise EngineError(f"this TensorRT ({trt.__version__}) has no {prefer} network flag (needs >= 10.9)")
    return flags | 1 << int(getattr(kinds, prefer))


def _check_network(trt, network, plan: BuildPlan, say: Callable[[str], None]) -> None:
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if inputs != plan.names.inputs:
        raise EngineError(f"the parsed network's inputs are {inputs}, expected {plan.names.inputs}")
    plugin_types = {getattr(trt.LayerType, n) for n in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN") if hasattr(trt.LayerType, n)}
    plugins = sum(network.get_layer(i).type in plugin_types for i in range(network.num_layers))
    expected = 4 * plan.config.num_hidden_layers  # map + reduce, in MoA and in MoE, per block
    if plugins < expected:  # more is fine: the parser may lower other nodes to libnvinfer plugins
        raise EngineError(f"the parsed network has {plugins} plugin layers, expected {expected} (2 jetmoe ops x "
                          f"MoA and MoE x {plan.config.num_hidden_layers} blocks): the parser fell back to the "
                          f"ONNX local functions for some nodes (TensorRT >= 10.15 is needed)")
    say(f"parsed: {network.num_layers} layers, {plugins} plugin layers")


def _progress_monitor(trt, say: Callable[[str], None]):
    class Progress(trt.IProgressMonitor):
        """Prints each top-level build phase once it starts and when it ends (with its duration)."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                say(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # keep building

        def phase_finish(self, phase_name):
            began = self.started.pop(phase_name, None)
            if began is not None and time.perf_counter() - began > 1.0:
                say(f"  {phase_name}: done in {time.perf_counter() - began:.1f} s")

    return Progress()

