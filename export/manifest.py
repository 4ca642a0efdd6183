"""`export.json`: what an export folder holds, as a typed record with one reader.

Written by the exporter (and by `export/unrolled.py` / `export/quantize.py` for their ONNX Runtime-only copies),
read by the ONNX Runtime runner, the TensorRT builder and the validator. The reader checks the format and its
version, and `verify_files` checks the files against the recorded sizes (cheap, catches truncation and a missing
model.onnx.data) or sha256s (reads every byte: the validator and the builder do it before trusting a run).
Fields added after a format version have defaults and are read as optional: an older export.json still reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jetmoe import dtypes
from jetmoe.errors import ConfigError, ExportError
from jetmoe.fileio import atomic_write_text, file_sha256
from jetmoe.io_names import IoNames, ModelRecord
from jetmoe.model import TASKS as MODEL_TASKS

MODEL_NAME = "model.onnx"
DATA_NAME = "model.onnx.data"
MANIFEST_NAME = "export.json"
FORMAT = "jetmoe-trt export"
FORMAT_VERSION = 2  # 2: files record bytes and sha256; dispatch recorded
UNROLLED = "unrolled"  # the dispatch of export/unrolled.py's (and every quantized) ONNX Runtime-only copy
DISPATCHES = ("plugin", "portable", UNROLLED)  # what model.onnx holds in place of the experts (`dispatch`)
TASKS = tuple(MODEL_TASKS)  # "causal-lm", "sequence-classification"


WRITERS = {"export": "an export (`jetmoe export`)", "quantized": "a quantized export (`jetmoe quantize`)",
           UNROLLED: "an unrolled ONNX Runtime copy (export/unrolled.py)"}


def writer(folder: Path) -> str | None:
    """Which command wrote the export folder, from its export.json: "export", "quantized" or "unrolled"; None when
    there is no readable export.json."""
    try:
        raw = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    if raw.get("quantization"):
        return "quantized"
    return UNROLLED if raw.get("dispatch") == UNROLLED else "export"


def owned_by(kind: str) -> Callable[[Path], str | None]:
    """The output rule's `owned` check (jetmoe/fileio.check_output) for a folder `kind` of command writes: an
    export folder of another kind (or with an unreadable export.json) is not replaced by --overwrite."""
    def other(folder: Path) -> str | None:
        found = writer(folder)
        return None if found == kind else WRITERS.get(found, f"an unreadable {MANIFEST_NAME}")
    return other


@dataclasses.dataclass(frozen=True)
class FileRecord:
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How `jetmoe quantize` (export/quantize.py) made an export's integer experts."""

    scheme: str  # "int8-weight-only", "int4-weight-only", "int8-dynamic"
    experts: list[str]  # expert groups quantized: "mlp" (MoE), "attention" (MoA)
    nodes: int  # expert MatMuls quantized
    block_size: int | None  # weight-only: input rows per scale; None for dynamic
    accuracy_level: int | None  # weight-only: MatMulNBits' activation precision (4: int8); None for dynamic
    symmetric: bool


@dataclasses.dataclass(frozen=True)
class ExportManifest(ModelRecord):
    task: str  # "causal-lm" or "sequence-classification"
    dtype: str  # "fp32", "fp16", "bf16": the graph's float type
    opset: int
    # "plugin" (jetmoe nodes + local functions), "portable" (standard ONNX ops only) or "unrolled" (ONNX Runtime
    # only: each expert a MatMul on its own weight; export/unrolled.py, also every quantized export)
    dispatch: str
    config: dict[str, Any]  # JetMoeConfig.to_dict()
    checkpoint: str  # the folder exported from
    inputs: list[dict[str, Any]]  # [{"name", "type", "shape"}] as in model.onnx
    outputs: list[dict[str, Any]]
    validation_outputs: bool
    custom_ops: list[dict[str, Any]]
    files: dict[str, FileRecord]  # file name -> size and sha256
    versions: dict[str, str]
    source: str | None = None  # unrolled / quantized: the export folder it was made from
    quantization: Quantization | None = None  # quantized: how (export/quantize.py)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def float_type(self) -> dtypes.DType:
        return dtypes.float_dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> ExportManifest:
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ExportError(f"{where} is not a jetmoe-trt export manifest")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ExportError(f"{where} has format version {raw.get('format_version')!r}; this jetmoe-trt reads "
                              f"version {FORMAT_VERSION}: export again with `jetmoe export`")
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is dataclasses.MISSING}
        missing = sorted(required - set(raw))
        if missing:
            raise ExportError(f"{where} lacks {missing}: export again with `jetmoe export`")
        try:
            values = {f.name: raw[f.name] for f in fields if f.name in raw}
            values["files"] = {name: FileRecord(**record) for name, record in raw["files"].items()}
            if values.get("quantization") is not None:
                values["quantization"] = Quantization(**values["quantization"])
            manifest = cls(**values)
            config = manifest.model_config
            manifest.float_type  # noqa: B018  (checks the dtype name)
        except (TypeError, AttributeError, ConfigError, ValueError) as e:
            raise ExportError(f"{where} is damaged ({e}): export again") from None
        if manifest.task not in TASKS:
            raise ExportError(f"{where} names an unknown task {manifest.task!r}")
        if manifest.dispatch not in DISPATCHES:
            raise ExportError(f"{where} names an unknown dispatch {manifest.dispatch!r} (this jetmoe-trt knows "
                              f"{list(DISPATCHES)}): export again")
        names = IoNames(config.num_hidden_layers, manifest.task, manifest.validation_outputs)
        recorded = [io["name"] for io in manifest.inputs]
        if recorded != names.inputs:
            raise ExportError(f"{where} lists inputs {recorded[:4]}... ({len(recorded)}), but its config "
                              f"({config.num_hidden_layers} layers, {manifest.task}) means {len(names.inputs)}: "
                              f"the manifest was edited or damaged; export again")
        return manifest

    def verify_files(self, folder: str | os.PathLike, *, sha256: bool) -> None:
        """Every recorded file present with its size (and, with `sha256`, its digest); ExportError otherwise."""
        folder = Path(folder)
        for name, record in self.files.items():
            path = folder / name
            if not path.is_file():
                raise ExportError(f"{path} is missing: model.onnx and {DATA_NAME} must stay together in the export "
                                  f"folder with the files export.json lists ({sorted(self.files)})")
            size = path.stat().st_size
            if size != record.bytes:
                raise ExportError(f"{path} has {size} bytes, export.json records {record.bytes}: the file was "
                                  f"truncated or replaced; export again")
            if sha256 and file_sha256(path) != record.sha256:
                raise ExportError(f"{path} differs from the file export.json describes (sha256 "
                                  f"{record.sha256[:12]}...): it was modified after export; export again")


def model_path(path: str | os.PathLike) -> Path:
    """model.onnx from a path to it or to its export folder (ExportError naming what is there instead)."""
    path = Path(path)
    if path.is_dir():
        if (path / MODEL_NAME).is_file():
            return path / MODEL_NAME
        raise ExportError(f"{path} is a folder without {MODEL_NAME}; give an export folder or its model.onnx")
    if not path.is_file():
        raise ExportError(f"no ONNX model at {path}")
    return path


def read_manifest(path: str | os.PathLike) -> ExportManifest:
    """The manifest beside model.onnx (`path` is model.onnx or its folder). Another file of the folder
    (model.onnx.data, config.json, ...) is refused by name: export.json describes model.onnx."""
    model = model_path(path)
    where = model.parent / MANIFEST_NAME
    if model.name != MODEL_NAME and where.is_file():
        raise ExportError(f"{path} is not the export's {MODEL_NAME}: give the export folder {model.parent} or its "
                          f"{MODEL_NAME}")
    try:
        raw = json.loads(where.read_text())
    except FileNotFoundError:
        raise ExportError(f"{where} is missing: {path} was not written by `jetmoe export`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{where} is not valid JSON: {e}") from None
    return ExportManifest.from_dict(raw, str(where))


def file_records(folder: Path, names: list[str]) -> dict[str, FileRecord]:
    return {name: FileRecord((folder / name).stat().st_size, file_sha256(folder / name)) for name in names}
