"""Exported `model.onnx` -> TensorRT engine + `model.engine.json`, all or nothing.

    build_engine("out/model.onnx", "model.engine", max_batch=4, max_seq=1024)

Steps: check the request against export.json (plain Python, `plan_build`: the only place the build options
have defaults), register the `jetmoe` plugins (plugin-dispatch exports, full TensorRT), parse with the flavour's
`OnnxParser`, check the parsed network's I/O by name, add the prefill and decode optimization profiles
(engines/profiles.py), build with a progress monitor, reuse and save the timing cache, then write the engine and
its manifest atomically.

Precision is the ONNX's: TensorRT 11 and TensorRT-RTX networks are always strongly typed (no FP16/BF16 builder
flags), and on TensorRT 10 the STRONGLY_TYPED flag is set so all behave alike. Asking for another dtype than the
export's is refused: re-export instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from engines import flavour as flavours
from engines.manifest import EngineManifest, write_manifest
from engines.profiles import Limits, Profile, make_profiles, resolve_limits
from export.manifest import ExportManifest, read_manifest
from jetmoe.config import JetMoeConfig
from jetmoe.errors import EngineError, ExportError, InputError, Unavailable
from jetmoe.fileio import atomic_write_bytes, check_output
from jetmoe.io_names import IoNames

log = logging.getLogger(__name__)
PLUGIN_MODES = ("aot", "jit")
BF16_MIN_CC = (8, 0)
# TensorRT-RTX targets (its ComputeCapability enum); it builds for them without a GPU
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """Everything decided before TensorRT is touched."""

    onnx_path: Path
    engine_path: Path
    export: ExportManifest
    config: JetMoeConfig
    names: IoNames
    dtype: str
    limits: Limits
    profiles: list[Profile]
    plugin_mode: str
    backend: str
    compute_capabilities: tuple[tuple[int, int], ...]  # TensorRT-RTX targets; () for full TensorRT (this GPU's)


def plan_build(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, max_batch: int = 1,
               max_seq: int | None = None, opt_batch: int | None = None, opt_seq: int | None = None,
               opt_past: int | None = None, dtype: str | None = None, plugin_mode: str = "aot",
               backend: str = flavours.TENSORRT.name, compute_capability: tuple[str, ...] = (),
               overwrite: bool = False) -> BuildPlan:
    """Check a build request against the export (no TensorRT needed); raise InputError / ExportError / EngineError.

    max_seq defaults to the model's max_position_embeddings; opt_batch to max_batch; opt_seq and opt_past to half
    of max_seq. `compute_capability` ("8.6", ...) chooses TensorRT-RTX's targets (default 8.6)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"no ONNX model at {onnx_path}" + (" (a folder: give its model.onnx)"
                                                              if onnx_path.is_dir() else ""))
    engine_path = check_output(engine_path, kind="file", overwrite=overwrite, inputs=[onnx_path.parent])
    if not engine_path.parent.is_dir():
        raise InputError(f"folder {engine_path.parent} for the engine does not exist")
    if plugin_mode not in PLUGIN_MODES:
        raise InputError(f"plugin_mode {plugin_mode!r} is not one of {PLUGIN_MODES}")
    which = flavours.flavour(backend)
    targets = _compute_capabilities(which, compute_capability)
    try:
        export = read_manifest(onnx_path)
    except ExportError as e:
        raise EngineError(str(e)) from None
    if dtype is not None and dtype != export.dtype:
        raise EngineError(f"{onnx_path} was exported in {export.dtype}, but a {dtype} engine was asked for: "
                          f"TensorRT builds in the ONNX's precision (strongly typed); re-export with "
                          f"`jetmoe export --dtype {dtype}`")
    if which is flavours.TENSORRT_RTX and export.dispatch != "portable":
        raise EngineError(f"{onnx_path} has the plugin dispatch (jetmoe::expert_map/expert_reduce nodes), and "
                          f"TensorRT-RTX cannot load Python plugins: export with --dispatch portable for it")
    try:
        export.verify_files(onnx_path.parent, sha256=True)
    except ExportError as e:
        raise EngineError(str(e)) from None
    config = export.model_config
    limits = resolve_limits(config, max_batch=max_batch, max_seq=max_seq, opt_batch=opt_batch, opt_seq=opt_seq,
                            opt_past=opt_past)
    return BuildPlan(onnx_path, engine_path, export, config, export.io_names, export.dtype, limits,
                     make_profiles(config, export.io_names, limits), plugin_mode, which.name, targets)


def _compute_capabilities(which: flavours.Flavour, requested: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    if which is not flavours.TENSORRT_RTX:
        if requested:
            raise InputError("--compute-capability is for --backend tensorrt-rtx; full TensorRT builds for the GPU "
                             "it runs on")
        return ()
    out = []
    for text in requested or ("8.6",):
        if text not in RTX_COMPUTE_CAPABILITIES:
            raise InputError(f"compute capability {text!r} is not a TensorRT-RTX target; choose from "
                             f"{', '.join(RTX_COMPUTE_CAPABILITIES)}")
        major, minor = text.split(".")
        out.append((int(major), int(minor)))
    return tuple(dict.fromkeys(out))


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *,
                 timing_cache: str | os.PathLike | None = None, builder_optimization_level: int | None = None,
                 **request) -> EngineManifest:
    """Build and write the engine and its manifest; return the manifest. `request`: plan_build's options.

    plugin_mode "aot" embeds the Triton PTX in the engine (runs in trtexec / C++ without Python); "jit" calls
    back into Python (engines/plugins.py must be importable where the engine runs). Raises Unavailable when the
    flavour (or, for full TensorRT, a CUDA GPU) is missing; nothing is written on failure.
    """
    plan = plan_build(onnx_path, engine_path, **request)
    if builder_optimization_level is not None and builder_optimization_level not in range(6):
        raise InputError(f"builder_optimization_level must be 0..5, got {builder_optimization_level!r}")
    cache_path = check_output(timing_cache, kind="file", overwrite=True) if timing_cache is not None else None
    trt = flavours.import_tensorrt(plan.backend)
    if plan.backend == flavours.TENSORRT.name:
        gpu_name, cc = flavours.require_cuda_gpu()
        if plan.dtype == "bf16" and cc < BF16_MIN_CC:
            raise EngineError(f"a bf16 engine needs compute capability >= 8.0; {gpu_name} is {cc[0]}.{cc[1]}")
        targets = (cc,)
        if plan.export.dispatch == "plugin":
            from engines.plugins import register_plugins

            register_plugins()
    else:
        gpu_name, targets = None, plan.compute_capabilities

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan.plugin_mode if plan.export.dispatch == "plugin"
                                                   else None))
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s", plan.onnx_path)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{plan.backend}'s ONNX parser refused {plan.onnx_path}: {errors}")
    check_network(trt, network, plan)

    config = builder.create_builder_config()
    if plan.compute_capabilities:
        set_compute_capabilities(trt, config, plan.compute_capabilities)
    add_profiles(builder, config, plan.profiles)
    if builder_optimization_level is not None:
        config.builder_optimization_level = builder_optimization_level
    cache = load_timing_cache(config, cache_path)  # held until the build ends (NvInfer.h: setTimingCache)
    monitor = progress_monitor(trt)
    config.progress_monitor = monitor

    where = gpu_name or "compute capability " + ", ".join(f"{a}.{b}" for a, b in targets)
    log.info("building a %s engine for %s (profiles: %s; max batch %d, max seq %d)", plan.dtype, where,
             ", ".join(p.name for p in plan.profiles), plan.limits.max_batch, plan.limits.max_seq)
    start = time.perf_counter()
    with _building(plan):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        if monitor.log.cancelled:
            raise KeyboardInterrupt  # Ctrl-C during the build: TensorRT stopped at the next step
        raise EngineError(f"{plan.backend} could not build an engine from {plan.onnx_path} (see its log above)")
    data = bytes(serialized)
    log.info("built in %.1f s: %.1f MiB", time.perf_counter() - start, len(data) / 2**20)
    if cache_path is not None:
        save_timing_cache(config, cache_path)
    del cache, monitor  # both had to outlive build_serialized_network
    manifest = EngineManifest(
        tensorrt_version=trt.__version__, gpu_name=gpu_name or "", compute_capability=targets[0],
        dtype=plan.dtype, task=plan.names.task, validation_outputs=plan.names.validation_outputs,
        config=plan.export.config, onnx_sha256=plan.export.files[plan.onnx_path.name].sha256,
        plugins=_plugins(plan), plugin_mode=plan.plugin_mode if plan.export.dispatch == "plugin" else "none",
        limits=plan.limits, profiles=plan.profiles, engine_sha256=hashlib.sha256(data).hexdigest(),
        backend=plan.backend, compute_capabilities=[list(cc) for cc in targets], dispatch=plan.export.dispatch,
        ptx_isa=_ptx_isa(plan, targets[0]))
    atomic_write_bytes(plan.engine_path, data)
    write_manifest(plan.engine_path, manifest)
    log.info("wrote %s and its manifest", plan.engine_path)
    return manifest


def _building(plan: BuildPlan):
    """Tells the plugins' autotune which implementation is built (engines/plugins.py, "Tactics")."""
    if plan.export.dispatch != "plugin":
        return contextlib.nullcontext()
    from engines.plugins import building

    return building(plan.plugin_mode)


def _ptx_isa(plan: BuildPlan, cc: tuple[int, int]) -> str:
    """The PTX ISA of the AOT kernels embedded in the engine ("" without them)."""
    if plan.export.dispatch != "plugin" or plan.plugin_mode != "aot":
        return ""
    from engines.kernels.aot import isa_text, ptx_isa

    return isa_text(ptx_isa(cc[0] * 10 + cc[1]))


def _plugins(plan: BuildPlan) -> dict[str, str]:
    if plan.export.dispatch != "plugin":
        return {}
    from engines.plugins import plugin_versions

    return plugin_versions()


def network_flags(trt, plugin_mode: str | None) -> int:
    """STRONGLY_TYPED where the flag exists (TensorRT 10; always on in 11 and RTX), and the AOT/JIT plugin
    preference for plugin exports (`plugin_mode` None: no plugins)."""
    flags = 0
    kinds = trt.NetworkDefinitionCreationFlag
    if hasattr(kinds, "STRONGLY_TYPED"):
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    if plugin_mode is None:
        return flags
    prefer = {"aot": "PREFER_AOT_PYTHON_PLUGINS", "jit": "PREFER_JIT_PYTHON_PLUGINS"}[plugin_mode]
    if not hasattr(kinds, prefer):
        raise Unavailable(f"this TensorRT ({trt.__version__}) has no {prefer} network flag (needs >= 10.9)")
    return flags | 1 << int(getattr(kinds, prefer))


def set_compute_capabilities(trt, config, targets: tuple[tuple[int, int], ...]) -> None:
    """TensorRT-RTX: build for these compute capabilities (no GPU needed)."""
    config.num_compute_capabilities = len(targets)
    for i, (major, minor) in enumerate(targets):
        config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{major}{minor}"), i)


def check_network(trt, network, plan: BuildPlan) -> None:
    """The parsed network's inputs and outputs, by name, and (plugin exports) its plugin layers."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    if inputs != set(plan.names.inputs) or outputs != set(plan.names.outputs):
        raise EngineError(f"the parsed network's inputs/outputs differ from the export's: missing "
                          f"{sorted(set(plan.names.inputs + plan.names.outputs) - inputs - outputs)}, unexpected "
                          f"{sorted((inputs | outputs) - set(plan.names.inputs) - set(plan.names.outputs))}")
    if plan.export.dispatch != "plugin":
        log.info("parsed: %d layers", network.num_layers)
        return
    plugin_types = {getattr(trt.LayerType, n) for n in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
                    if hasattr(trt.LayerType, n)}
    plugins = sum(network.get_layer(i).type in plugin_types for i in range(network.num_layers))
    expected = 4 * plan.config.num_hidden_layers  # map + reduce, in MoA and in MoE, per block
    if plugins < expected:  # more is fine: the parser may lower other nodes to libnvinfer plugins
        raise EngineError(f"the parsed network has {plugins} plugin layers, expected {expected} (2 jetmoe ops x "
                          f"MoA and MoE x {plan.config.num_hidden_layers} blocks): the parser fell back to the "
                          f"ONNX local functions for some nodes (TensorRT >= 10.15 is needed)")
    log.info("parsed: %d layers, %d plugin layers", network.num_layers, plugins)


def add_profiles(builder, config, profiles: list[Profile]) -> None:
    """One TensorRT optimization profile per `Profile`, in order; EngineError naming the one TensorRT refuses.
    (The bindings raise RuntimeError where `setDimensions` returns false; `add_optimization_profile` returns the
    profile's index, or -1 for an invalid one.)"""
    for index, profile in enumerate(profiles):
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            try:
                trt_profile.set_shape(name, lo, opt, hi)
            except RuntimeError as e:
                raise EngineError(f"TensorRT refused the {profile.name} profile's shapes for {name} (min {lo}, "
                                  f"opt {opt}, max {hi}): {e}") from None
        added = config.add_optimization_profile(trt_profile)
        if added != index:
            raise EngineError(f"TensorRT refused the {profile.name} optimization profile (add_optimization_profile "
                              f"returned {added}, expected index {index}): {profile.shapes}")


def load_timing_cache(config, path: Path | None):
    """Attach a timing cache to `config` and return it (it must outlive the build): `path`'s if it exists and
    TensorRT accepts it, else a fresh one, with a warning when a file was refused (made on another GPU or by
    another TensorRT: `set_timing_cache` returns False) or is not a cache (`create_timing_cache` gives None)."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if data and cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        log.info("timing cache: %d bytes from %s", len(data), path)
        return cache
    if data:
        reason = "is not a timing cache" if cache is None else "was made on another device or TensorRT version"
        log.warning("timing cache %s %s; starting a fresh one (saving will replace the file)", path, reason)
    elif path is not None:
        log.info("timing cache: %s is empty or missing; starting a fresh one", path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError("TensorRT refused a fresh, empty timing cache")
    return cache


def save_timing_cache(config, path: Path) -> bool:
    """Write the config's timing cache to `path` atomically; False (and a warning) where there is none, as
    Polygraphy guards `get_timing_cache()`."""
    cache = config.get_timing_cache()
    serialized = cache.serialize() if cache is not None else None
    if serialized is None:
        log.warning("TensorRT returned no timing cache; %s not written", path)
        return False
    data = bytes(serialized)
    atomic_write_bytes(path, data)
    log.info("timing cache: %d bytes to %s", len(data), path)
    return True


class PhaseLog:
    """What the progress monitor does, without TensorRT: says each top-level phase when it starts and, if it took
    over a second, when it ends. Thread-safe (NvInfer.h: "The implementation of IProgressMonitor must be
    thread-safe so that it can be called from multiple internal threads"): one lock around all state and output;
    phases of one name may overlap, so start times are a stack per name. Ctrl-C inside a callback cancels the
    build at the next step (step_complete returns False, as NVIDIA's simple_progress_monitor sample does)
    instead of escaping a noexcept callback."""

    def __init__(self, say: Callable[[str], None] = log.info, clock: Callable[[], float] = time.perf_counter) -> None:
        self._say, self._clock = say, clock
        self._lock = threading.Lock()
        self._started: dict[str, list[float]] = {}
        self.cancelled = False

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        try:
            with self._lock:
                self._started.setdefault(phase_name, []).append(self._clock())
                if parent_phase is None:
                    self._say(f"  {phase_name} ({num_steps} steps)")
        except KeyboardInterrupt:
            self.cancelled = True

    def step_complete(self, phase_name: str, step: int) -> bool:
        return not self.cancelled

    def phase_finish(self, phase_name: str) -> None:
        try:
            with self._lock:
                stack = self._started.get(phase_name)
                began = stack.pop() if stack else None
                if stack == []:
                    del self._started[phase_name]
                if began is not None and self._clock() - began > 1.0:
                    self._say(f"  {phase_name}: done in {self._clock() - began:.1f} s")
        except KeyboardInterrupt:
            self.cancelled = True


def progress_monitor(trt, say: Callable[[str], None] = log.info):
    """A trt.IProgressMonitor over a PhaseLog."""

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.log = PhaseLog(say)

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.log.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return self.log.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            self.log.phase_finish(phase_name)

    return Progress()
