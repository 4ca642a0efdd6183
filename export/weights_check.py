"""Are an export's weights stored exactly once, all external, under their checkpoint names?

    report = weights_report("out", "ckpt")        # an export folder and the checkpoint it was made from
    print(report); assert report                   # true when all three hold:

1. nothing big inside model.onnx: no initializer or Constant (graph, subgraph or local function) above `inline_limit`
   bytes;
2. no dead bytes in model.onnx.data: every byte is an initializer's, or padding up to the next ALIGN boundary;
3. every weight of the model is one initializer with its checkpoint name and its values (in the export's dtype),
   and its values are nowhere else (not inline, not under another name, not in a dead range).

"Every weight" is what loading the checkpoint gives (`checkpoint.verify` and `lm_head_tied`, as the exporter): a
tied lm_head is the embeddings, stored once as `model.embed_tokens.weight`; an untied one is `lm_head.weight`.
Values are compared by digest, one checkpoint tensor in memory at a time, so the check runs at full size (it reads
the checkpoint and model.onnx.data once). A 2-D tensor whose values appear transposed elsewhere (an optimizer
folding `Transpose(W)` into a constant) is found too. `values=False` checks names, shapes and byte ranges only
(headers: what the exporter runs on every export, `check_weights`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from export.manifest import DATA_NAME, MODEL_NAME, read_manifest
from jetmoe import checkpoint, dtypes
from jetmoe.checkpoint import WeightFiles
from jetmoe.config import JetMoeConfig
from jetmoe.errors import ExportError
from jetmoe.model import TASKS

ALIGN = 4096  # page size: export/exporter.py starts every weight in model.onnx.data on such a boundary
INLINE_LIMIT = 1024  # bytes; the largest legitimate inline constant is RoPE's inverse frequencies (Dh/2 floats)
_LISTED = 12


@dataclasses.dataclass
class WeightsReport:
    inline: list[tuple[str, int]]  # (where/name, bytes) stored in model.onnx above the limit
    unreferenced: list[tuple[int, int, str]]  # (start, end, what it holds if recognised) in model.onnx.data
    shared: list[tuple[str, str]]  # two initializers over overlapping bytes
    other_files: list[tuple[str, str]]  # (initializer, location) external data outside model.onnx.data
    missing: list[str]  # model weights without an initializer of their name
    renamed: list[tuple[str, str]]  # (checkpoint name, name its values are stored under instead)
    duplicated: list[tuple[str, str]]  # (checkpoint name, another place holding its values)
    unexpected: list[str]  # external initializers that are no model weight
    mismatched: list[str]  # an initializer of a weight's name whose shape, dtype or values differ
    data_bytes: int
    referenced_bytes: int

    def __bool__(self) -> bool:
        return not any((self.inline, self.unreferenced, self.shared, self.other_files, self.missing, self.renamed,
                        self.duplicated, self.unexpected, self.mismatched))

    def __str__(self) -> str:
        lines = [f"{DATA_NAME}: {self.data_bytes} bytes, {self.referenced_bytes} referenced"]
        for field in dataclasses.fields(self):
            items = getattr(self, field.name)
            if isinstance(items, list) and items:
                lines.append(f"{field.name} ({len(items)}): " + "; ".join(map(_show, items[:_LISTED]))
                             + (f"; ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""))
        if self:
            lines.append("all weights stored once, external, under their checkpoint names")
        return "\n".join(lines)


def _show(item) -> str:
    return " ".join(str(part) for part in item) if isinstance(item, tuple) else str(item)


def weights_report(export_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, *, values: bool = True,
                   inline_limit: int = INLINE_LIMIT, align: int = ALIGN) -> WeightsReport:
    """Check the export folder `export_dir` (model.onnx, model.onnx.data, export.json) against `checkpoint_dir`."""
    export_dir, checkpoint_dir = Path(export_dir), Path(checkpoint_dir)
    task = read_manifest(export_dir).task
    config = JetMoeConfig.from_pretrained(checkpoint_dir)
    weights = checkpoint.verify(checkpoint_dir, TASKS[task], config)
    config = config.replace(tie_word_embeddings=checkpoint.lm_head_tied(weights, config))
    return check_weights(export_dir, weights, config, task, values=values, inline_limit=inline_limit, align=align)


def check_weights(export_dir: Path, weights: WeightFiles, config: JetMoeConfig, task: str, *, values: bool,
                  inline_limit: int = INLINE_LIMIT, align: int = ALIGN) -> WeightsReport:
    """The report for an export of the verified checkpoint `weights`; `config.tie_word_embeddings` as loading
    decides it (`lm_head_tied`). Reads no tensor unless `values`."""
    proto = onnx.load(export_dir / MODEL_NAME, load_external_data=False)
    data_path = export_dir / DATA_NAME
    data_bytes = data_path.stat().st_size if data_path.is_file() else 0
    with torch.device("meta"):  # the weights a loaded model has: named_parameters lists a tied one once
        shapes = {name: tuple(p.shape) for name, p in TASKS[task](config).named_parameters()}

    inline = {where: tensor for where, tensor in _inline_tensors(proto)
              if tensor.data_location != onnx.TensorProto.EXTERNAL and _stored_bytes(tensor) > inline_limit}
    external, other_files = {}, []
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            if info.get("location") != DATA_NAME:
                other_files.append((tensor.name, info.get("location", "?")))
                continue
            external[tensor.name] = (int(info.get("offset", 0)), int(info["length"]), tensor)

    ranges = sorted((offset, offset + length, name) for name, (offset, length, _) in external.items())
    shared = [(a[2], b[2]) for a, b in itertools.pairwise(ranges) if b[0] < a[1]]
    gaps, end = [], 0
    for start, stop, _ in ranges:
        if start > end and not (start - end < align and start % align == 0):
            gaps.append((end, start))
        end = max(end, stop)
    if data_bytes > end:
        gaps.append((end, data_bytes))

    initializers = {t.name: t for t in proto.graph.initializer}
    export_type = _export_dtype(proto, shapes)
    mismatched = sorted(name for name in set(shapes) & set(initializers)
                        if tuple(initializers[name].dims) != shapes[name]
                        or initializers[name].data_type != export_type.onnx)
    report = WeightsReport(inline=[(where, _stored_bytes(t)) for where, t in sorted(inline.items())],
                           unreferenced=[(a, b, "") for a, b in gaps], shared=shared, other_files=other_files,
                           missing=sorted(set(shapes) - set(initializers)), renamed=[], duplicated=[],
                           unexpected=sorted(set(external) - set(shapes)), mismatched=mismatched,
                           data_bytes=data_bytes, referenced_bytes=sum(stop - start for start, stop, _ in ranges))
    if values:
        _compare_values(report, weights, shapes, inline, external, data_path, export_type.torch, align)
    return report


def _compare_values(report: WeightsReport, weights: WeightFiles, shapes: dict[str, tuple[int, ...]],
                    inline: dict[str, onnx.TensorProto], external: dict[str, tuple[int, int, onnx.TensorProto]],
                    data_path: Path, dtype: torch.dtype, align: int) -> None:
    """Digest every stored tensor, then each checkpoint tensor (and its transpose): where do its values live?"""
    places: dict[str, list[str]] = {}  # digest -> where those bytes are stored
    with open(data_path, "rb") as data:
        for name, (offset, length, _) in external.items():
            places.setdefault(_digest_range(data, offset, length), []).append(name)
        for where, tensor in inline.items():
            places.setdefault(_digest(_raw_bytes(tensor)), []).append(f"inline {where}")
        sizes = {math.prod(shape) * dtype.itemsize for shape in shapes.values()}
        for start, stop, _ in report.unreferenced:  # dead bytes: does a weight sit at an aligned start?
            first = start + (-start % align)
            for size in sizes:
                if first + size <= stop:
                    places.setdefault(_digest_range(data, first, size), []).append(
                        f"unreferenced {first}..{first + size}")

    missing, dead = set(report.missing), {}
    for name, tensor in checkpoint.iter_tensors(weights, set(shapes)):
        stored = tensor.to(dtype)
        found = places.get(_digest(tensor_bytes(stored)), [])
        if stored.dim() == 2:  # an optimizer folds Transpose(W) of a linear layer (kv_proj, lm_head)
            found = found + [f"{where} (transposed)" for where in places.get(_digest(tensor_bytes(stored.t())), [])]
        elsewhere = sorted((where for where in found if where != name and where not in shapes),
                           key=lambda where: where.startswith("unreferenced"))  # a live copy is the rename
        dead.update((int(where.split()[1].split("..")[0]), name) for where in elsewhere
                    if where.startswith("unreferenced"))
        if name in missing:
            if elsewhere:
                report.renamed.append((name, elsewhere[0]))
                report.duplicated.extend((name, where) for where in elsewhere[1:])
        else:
            if name not in found and name not in report.mismatched:
                report.mismatched.append(name)
            report.duplicated.extend((name, where) for where in elsewhere)
    report.mismatched.sort()
    report.unreferenced = [(a, b, ", ".join(f"{holder} at {at}" for at, holder in sorted(dead.items()) if a <= at < b))
                           for a, b, _ in report.unreferenced]


def _export_dtype(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dtypes.DType:
    """The float type of the export's matrices (every weight of two or more dimensions has it)."""
    types = {t.data_type for t in proto.graph.initializer if t.name in shapes and len(t.dims) >= 2}
    types = types or {t.data_type for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    found = [dtypes.lookup(t) for t in types]
    if len(found) != 1 or found[0] not in dtypes.FLOATS:
        raise ExportError(f"cannot tell the export's weight type: its weights are ONNX types {sorted(types)}")
    return found[0]


def _inline_tensors(proto: onnx.ModelProto):
    """(where, TensorProto) for every tensor stored in the model file: initializers, Constant values, in the
    main graph, subgraphs and local functions."""
    def in_graph(graph: onnx.GraphProto, prefix: str):
        for tensor in graph.initializer:
            yield f"{prefix}{tensor.name}", tensor
        yield from in_nodes(graph.node, prefix)

    def in_nodes(nodes, prefix: str):
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield f"{prefix}{node.op_type} {node.output[0] if node.output else node.name}", attr.t
                elif attr.type == onnx.AttributeProto.GRAPH:
                    yield from in_graph(attr.g, f"{prefix}{node.name}/")
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for graph in attr.graphs:
                        yield from in_graph(graph, f"{prefix}{node.name}/")

    yield from in_graph(proto.graph, "")
    for function in proto.functions:
        yield from in_nodes(function.node, f"function {function.domain}::{function.name}/")


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes an inline tensor's values take (typed fields counted at their element size)."""
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(map(len, tensor.string_data))
    return numpy_helper.to_array(tensor).nbytes


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, flat, not copied (a copy of jetmoe-8b's largest expert tensor is 369 MB in bf16)."""
    return tensor.contiguous().view(torch.uint8).reshape(-1).numpy().data


def _digest(data) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _digest_range(f, offset: int, length: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    f.seek(offset)
    while length:
        block = f.read(min(length, 1 << 24))
        if not block:
            break
        digest.update(block)
        length -= len(block)
    return digest.hexdigest()
