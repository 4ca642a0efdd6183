"""Exported `model.onnx` -> TensorRT engine + `model.engine.json`, all or nothing.

    build_engine("out/model.onnx", "model.engine", max_batch=4, max_seq=1024)

Steps: check the request against export.json (plain Python, `plan_build`: the only place the build options
have defaults), register the `jetmoe` plugins (plugin-dispatch exports, full TensorRT), parse with the flavour's
`OnnxParser`, check the parsed network's inputs and outputs (names and types) against export.json, set the
targets (TensorRT-RTX: the compute capabilities asked for; full TensorRT: the GPU it runs on), add the prefill and
decode optimization profiles (engines/profiles.py) and read them back from the builder config, build with a
progress monitor, reuse and save the timing cache (full TensorRT only: TensorRT-RTX times no tactics), then write
the engine and its manifest atomically.

TensorRT-RTX (`backend="tensorrt-rtx"`) builds without a GPU, CUDA or driver, for portable-dispatch exports only
(its parser takes no `tensorrt.plugin` plugins: plan_build refuses a plugin export in one line).

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
from jetmoe import dtypes
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
                          f"TensorRT-RTX cannot run our plugins (it has no tensorrt.plugin; docs/support.md): export "
                          f"with --dispatch portable for it")
    if export.dtype == "bf16" and any(cc < BF16_MIN_CC for cc in targets):
        raise EngineError(f"a bf16 engine needs compute capability >= 8.0; asked for "
                          f"{', '.join(f'{a}.{b}' for a, b in targets)}")
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
    if timing_cache is not None and plan.backend != flavours.TENSORRT.name:
        raise InputError(f"--timing-cache is for full TensorRT: {plan.backend} times no tactics (its timing cache "
                         f"calls are no-ops)")
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
    log.info("parsing %s with %s %s (strongly typed: %s)", plan.onnx_path, plan.backend, trt.__version__, plan.dtype)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(f"node {e.node()} {e.node_name()!r} ({e.node_operator()}): {e.desc()}"
                           for e in (parser.get_error(i) for i in range(parser.num_errors)))
        raise EngineError(f"{plan.backend}'s ONNX parser refused {plan.onnx_path}: {errors} (`jetmoe lint` reports "
                          f"every node)")
    check_network(trt, network, plan)

    config = builder.create_builder_config()
    if plan.compute_capabilities:
        set_compute_capabilities(trt, config, plan.compute_capabilities)
    check_profiles(network, config, add_profiles(builder, config, plan.profiles), plan.profiles)
    if builder_optimization_level is not None:
        config.builder_optimization_level = builder_optimization_level
    # held until the build ends (NvInfer.h: setTimingCache)
    cache = load_timing_cache(config, cache_path) if plan.backend == flavours.TENSORRT.name else None
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
    del parser, network  # the parser holds the weights: free them before the engine is hashed and written
    data = memoryview(serialized).cast("B")  # no copy (an fp32 engine at 8B widths, 2 layers, is 3 GB)
    log.info("built in %.1f s: %.1f MiB", time.perf_counter() - start, data.nbytes / 2**20)
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
    """TensorRT-RTX: build for these compute capabilities (no GPU needed), read back from the config."""
    known = {name[2:]: member for name, member in trt.ComputeCapability.__members__.items() if name.startswith("SM")}
    missing = [f"{a}.{b}" for a, b in targets if f"{a}{b}" not in known]
    if missing:
        raise EngineError(f"{trt.__name__} {trt.__version__} cannot target compute capability {', '.join(missing)}; "
                          f"it knows {', '.join(f'{k[:-1]}.{k[-1]}' for k in known)}")
    config.num_compute_capabilities = len(targets)
    for i, (major, minor) in enumerate(targets):
        if not config.set_compute_capability(known[f"{major}{minor}"], i):
            raise EngineError(f"{trt.__name__} refused target compute capability {major}.{minor}")
    held = [config.get_compute_capability(i) for i in range(config.num_compute_capabilities)]
    if held != [known[f"{a}{b}"] for a, b in targets]:
        raise EngineError(f"the builder config holds the targets {held}, not the requested {targets}")


def network_io(network) -> list[tuple[str, str]]:
    """(name, TensorRT type name) of the parsed network's inputs, then its outputs."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    return [(t.name, t.dtype.name) for t in tensors]


def check_network(trt, network, plan: BuildPlan) -> None:
    """The parsed network's inputs and outputs against export.json (names, order and types: the network is strongly
    typed, so these are the engine's), and (plugin exports) its plugin layers."""
    got = network_io(network)
    want = [(io["name"], dtypes.dtype(io["type"]).trt) for io in plan.export.inputs + plan.export.outputs]
    if got != want:
        differ = [f"{w[0]} {w[1]} -> {g[0]} {g[1]}" for g, w in zip(got, want, strict=False) if g != w]
        first = f": first differences (export.json -> network) {', '.join(differ[:4])}" if differ else ""
        raise EngineError(f"the parsed network's inputs/outputs differ from export.json's ({len(want)} in "
                          f"export.json, {len(got)} in the network){first}")
    shown = got[:4] + [got[network.num_inputs]]  # the token inputs, one cache input (if any), the logits
    log.info("parsed: %d layers; inputs and outputs as export.json: %s, ... (%d inputs, %d outputs)",
             network.num_layers, ", ".join(f"{name} {kind}" for name, kind in dict(shown).items()),
             network.num_inputs, network.num_outputs)
    if plan.export.dispatch != "plugin":
        return
    plugin_types = {getattr(trt.LayerType, n) for n in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")
                    if hasattr(trt.LayerType, n)}
    plugins = sum(network.get_layer(i).type in plugin_types for i in range(network.num_layers))
    expected = 4 * plan.config.num_hidden_layers  # map + reduce, in MoA and in MoE, per block
    if plugins < expected:  # more is fine: the parser may lower other nodes to libnvinfer plugins
        raise EngineError(f"the parsed network has {plugins} plugin layers, expected {expected} (2 jetmoe ops x "
                          f"MoA and MoE x {plan.config.num_hidden_layers} blocks): the parser fell back to the "
                          f"ONNX local functions for some nodes (TensorRT >= 10.15 is needed)")
    log.info("parsed: %d plugin layers", plugins)


def add_profiles(builder, config, profiles: list[Profile]) -> list:
    """One TensorRT optimization profile per `Profile`, in order; return them. EngineError naming the one TensorRT
    refuses. (The bindings raise RuntimeError where `setDimensions` returns false; `add_optimization_profile`
    returns the profile's index, or -1 for an invalid one.)"""
    added_profiles = []
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
        added_profiles.append(trt_profile)
    return added_profiles


def check_profiles(network, config, trt_profiles: list, profiles: list[Profile]) -> None:
    """The profiles as the builder config holds them, read back before the build: their number from the config,
    each input's (min, opt, max) from the profile objects it was given (IBuilderConfig has no getter for those)."""
    if config.num_optimization_profiles != len(profiles):
        raise EngineError(f"the builder config holds {config.num_optimization_profiles} optimization profiles, "
                          f"expected {len(profiles)} ({', '.join(p.name for p in profiles)})")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    for trt_profile, profile in zip(trt_profiles, profiles, strict=True):
        held = {name: tuple(tuple(dims) for dims in trt_profile.get_shape(name)) for name in names}
        if held != profile.shapes:
            wrong = sorted(name for name in names if held[name] != profile.shapes.get(name))
            raise EngineError(f"TensorRT holds other shapes for the {profile.name} profile than requested: "
                              f"{', '.join(f'{n} {held[n]} (asked {profile.shapes.get(n)})' for n in wrong[:3])}")
        past = next((name for name in names if name.startswith("past_key_values.")), None)
        log.info("profile %s held: input_ids %s%s", profile.name, held["input_ids"],
                 f", past_seq {held[past][0][2]}..{held[past][2][2]}" if past else "")


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
