"""`model.engine.json`: what an engine was built from and for, and whether it can run here.

Pure Python. Written atomically beside the engine by the builder; read and checked by the runtime before it
deserialises the engine. A TensorRT engine runs only with the TensorRT version that built it and only on GPUs of
the compute capabilities it was built for (no version or hardware compatibility flags are set), so both are hard
errors; another GPU model of the same compute capability (H100 vs H200) runs but is tuned for the other one,
a warning. A TensorRT-RTX engine lists every compute capability it was built for (it is built without a GPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from engines.profiles import Limits, Profile
from jetmoe.errors import EngineError, EngineMismatch
from jetmoe.fileio import atomic_write_text
from jetmoe.io_names import ModelRecord

FORMAT = "jetmoe-trt engine"
FORMAT_VERSION = 2  # 2: backend, compute_capabilities, dispatch, ptx_isa
SUFFIX = ".json"  # model.engine -> model.engine.json


def manifest_path(engine_path: str | os.PathLike) -> Path:
    path = Path(engine_path)
    return path.with_name(path.name + SUFFIX)


@dataclasses.dataclass(frozen=True)
class EngineManifest(ModelRecord):
    tensorrt_version: str
    gpu_name: str  # the GPU it was built and tuned on; "" for a TensorRT-RTX build made without one
    compute_capability: tuple[int, int]  # the first of compute_capabilities
    dtype: str  # the ONNX's ("fp32", "fp16", "bf16"): the networks are strongly typed
    task: str
    validation_outputs: bool
    config: dict[str, Any]  # JetMoeConfig.to_dict() of the export
    onnx_sha256: str  # of model.onnx, as recorded in export.json
    plugins: dict[str, str]  # "jetmoe::expert_map" -> plugin version ({} for a portable-dispatch engine)
    plugin_mode: str  # "aot" (kernels embedded, no Python needed at runtime), "jit" (Python impl) or "none"
    limits: Limits
    profiles: list[Profile]
    engine_sha256: str = ""
    backend: str = "tensorrt"  # "tensorrt" or "tensorrt-rtx" (engines/flavour.py)
    compute_capabilities: list[list[int]] = dataclasses.field(default_factory=list)  # every target
    dispatch: str = "plugin"  # the export's: "plugin" or "portable"
    ptx_isa: str = ""  # AOT engines: the PTX ISA of the embedded kernels ("8.0" = CUDA 12.0 drivers and newer)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["compute_capability"] = list(self.compute_capability)
        raw["limits"] = self.limits.to_dict()
        raw["profiles"] = [p.to_dict() for p in self.profiles]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EngineManifest:
        if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
            raise EngineError(f"not a {FORMAT} manifest version {FORMAT_VERSION}: format {raw.get('format')!r}, "
                              f"version {raw.get('format_version')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING}
        missing = sorted(fields - set(raw) - optional)
        if missing:
            raise EngineError(f"engine manifest lacks {missing}")
        values = {k: v for k, v in raw.items() if k in fields}
        values["compute_capability"] = tuple(raw["compute_capability"])
        values["limits"] = Limits(**raw["limits"])
        values["profiles"] = [Profile.from_dict(p) for p in raw["profiles"]]
        return cls(**values)


def write_manifest(engine_path: str | os.PathLike, manifest: EngineManifest) -> Path:
    path = manifest_path(engine_path)
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(engine_path: str | os.PathLike) -> EngineManifest:
    path = manifest_path(engine_path)
    if not path.is_file():
        raise EngineError(f"no engine manifest at {path}: build the engine with `jetmoe build`, which writes it "
                          f"beside the engine")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"engine manifest {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise EngineError(f"engine manifest {path} does not hold a JSON object")
    try:
        return EngineManifest.from_dict(raw)
    except (TypeError, KeyError, ValueError) as e:
        raise EngineError(f"engine manifest {path} is damaged ({e}): rebuild the engine") from None


def check_compatible(manifest: EngineManifest, *, tensorrt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int], plugins: dict[str, str]) -> list[str]:
    """Raise EngineMismatch where the engine cannot run here; return warnings for what only costs speed."""
    if tensorrt_version != manifest.tensorrt_version:
        raise EngineMismatch(f"engine was built with TensorRT {manifest.tensorrt_version} but TensorRT "
                             f"{tensorrt_version} is running: rebuild it with `jetmoe build`")
    targets = [tuple(cc) for cc in manifest.compute_capabilities] or [tuple(manifest.compute_capability)]
    if tuple(compute_capability) not in targets:
        built = ", ".join(_cc(cc) for cc in targets)
        raise EngineMismatch(f"engine was built for compute capability {built}"
                             f"{f' ({manifest.gpu_name})' if manifest.gpu_name else ''} but this GPU, {gpu_name}, is "
                             f"{_cc(compute_capability)}: rebuild it for this GPU")
    for plugin, version in manifest.plugins.items():
        if plugin not in plugins:
            raise EngineMismatch(f"engine uses plugin {plugin} version {version}, which this jetmoe-trt does not "
                                 f"define (it defines {sorted(plugins)})")
        if plugins[plugin] != version:
            raise EngineMismatch(f"engine uses plugin {plugin} version {version} but this jetmoe-trt defines "
                                 f"version {plugins[plugin]}: rebuild the engine")
    warnings = []
    if manifest.gpu_name and gpu_name != manifest.gpu_name:
        warnings.append(f"engine was tuned on {manifest.gpu_name}, running on {gpu_name} (same compute capability "
                        f"{_cc(compute_capability)}): it runs, possibly slower than a rebuilt one")
    return warnings


def _cc(cc) -> str:
    return f"{cc[0]}.{cc[1]}"
