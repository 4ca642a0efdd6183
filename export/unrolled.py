"""An export with its `jetmoe` nodes replaced by standard ops, each expert a MatMul on its own initializer.

    unroll_experts("exp", "exp-unrolled")       # a folder OnnxrtRunner, `jetmoe generate` and `validate` read

The plugin-dispatch export keeps every expert weight as one stacked `[E, N, D]` initializer read by an opaque
`jetmoe` node; ONNX Runtime runs the node's local-function body, which slices the stack per call. Weight-only
and dynamic quantizers (`onnxruntime.quantization`) only rewrite `MatMul` nodes whose B input is an
initializer, so they never reach the experts there (~97% of jetmoe-8b's weights). This rewrite inlines the
local-function body of each node (export/functions.py, the one reference body) with two substitutions:

    Gather(weight, e) -> Gemm(rows, ., transB=1)   becomes   MatMul(rows, weight[e].T)   (a [D, N] initializer)
    Shape(weight)                                  becomes   a constant

Everything else (routers, attention, norms, the rows' NonZero/Gather/ScatterND routing) is left as exported, so
routers stay float whatever quantizer runs next (export/quantize.py). Weights are copied one expert at a time
from the export's model.onnx.data into the new one (`os.pread`, page aligned): peak memory is one tensor, not the
model. The copy's export.json records `"dispatch": "unrolled"` and its source; its graph carries the metadata
`jetmoe.dispatch = unrolled`, and `jetmoe lint` names it an ONNX Runtime-only copy: TensorRT needs the export.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.functions import local_functions
from export.lint import DISPATCH_KEY, load_graph
from export.manifest import (
    DATA_NAME,
    MANIFEST_NAME,
    MODEL_NAME,
    UNROLLED,
    ExportManifest,
    Quantization,
    file_records,
    model_path,
    owned_by,
    read_manifest,
)
from export.ort_graph import ORT_MODEL_NAME, node_reads
from export.schema import DOMAIN
from export.weights_check import ALIGN
from jetmoe import dtypes
from jetmoe.errors import ExportError
from jetmoe.fileio import atomic_directory, check_output
from jetmoe.log import progress
from jetmoe.op_contract import OPS

log = logging.getLogger(__name__)


def unroll_experts(export: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `out_dir` (model.onnx, model.onnx.data, export.json, the export's sidecar files) with every `jetmoe`
    node of the plugin-dispatch `export` (its folder or model.onnx) unrolled; return its model.onnx."""
    source, manifest = unrollable(export)
    out_dir = check_output(out_dir, kind="dir", overwrite=overwrite, inputs=[source.parent], marker=MANIFEST_NAME,
                           owned=owned_by("unrolled"))
    with atomic_directory(out_dir) as tmp:
        write_unrolled(source, manifest, tmp)
        written = [MODEL_NAME, DATA_NAME, *copy_sidecars(source.parent, manifest, tmp)]
        derived_manifest(manifest, source.parent, tmp, written).write(tmp)
    return out_dir / MODEL_NAME


def unrollable(export: str | os.PathLike) -> tuple[Path, ExportManifest]:
    """model.onnx and its manifest, checked: a plugin-dispatch fp32 or fp16 export with its files in place."""
    source = model_path(export)
    manifest = read_manifest(source)
    if manifest.dispatch != "plugin":
        raise ExportError(f"{source} has the {manifest.dispatch} dispatch: only a plugin-dispatch export (its "
                          f"{DOMAIN} nodes) can be unrolled; export again with --dispatch plugin")
    if manifest.dtype not in ("fp32", "fp16"):
        raise ExportError(f"{source} is a {manifest.dtype} export: unrolling and quantizing start from fp32 or fp16 "
                          "(ONNX Runtime's CPU provider has no bf16 kernels)")
    manifest.verify_files(source.parent, sha256=False)
    return source, manifest


def write_unrolled(source: Path, manifest: ExportManifest, folder: Path) -> Path:
    """Write the unrolled model.onnx and model.onnx.data of `source` into `folder`; return the model's path."""
    model = load_graph(source)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    bodies = {f.name: f for f in local_functions(manifest.model_config.num_local_experts, opset)}
    initializers = {t.name: t for t in model.graph.initializer}
    nodes, added = [], []
    with _DataWriter(folder / DATA_NAME, source.parent) as writer:
        for i, node in enumerate(progress(list(model.graph.node), "unrolling experts", unit="node", logger=log)):
            if node.domain != DOMAIN:
                nodes.append(node)
                continue
            weight_name = node.input[OPS[node.op_type].input_names.index("weight")]
            if weight_name not in initializers:
                raise ExportError(f"node {node.name!r} reads {weight_name!r}, which is no initializer: not a model "
                                  "`jetmoe export` wrote")
            body, inits = _inline(node, bodies[node.op_type], initializers[weight_name], f"{node.name or i}/", writer)
            nodes.extend(body)
            added.extend(inits)
        used = {name for node in nodes for name in node_reads(node)}
        kept = [t for t in model.graph.initializer if t.name in used]
        for tensor in kept:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                writer.copy(tensor)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.functions[:]
    model.metadata_props.add(key=DISPATCH_KEY, value=UNROLLED)
    opsets = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    onnx.save_model(model, folder / MODEL_NAME)
    onnx.checker.check_model(str(folder / MODEL_NAME))  # by path: the external data is checked against the folder
    return folder / MODEL_NAME


def copy_sidecars(source_dir: Path, manifest: ExportManifest, folder: Path) -> list[str]:
    """Copy the files other tools read (config.json, genai_config.json, tokenizer files: export/sidecars.py) that
    the export records into `folder`; return their names."""
    names = [name for name in manifest.files if name not in (MODEL_NAME, DATA_NAME, ORT_MODEL_NAME)]
    for name in names:
        shutil.copyfile(source_dir / name, folder / name)
    return names


def derived_manifest(manifest: ExportManifest, source_dir: Path, folder: Path, written: list[str],
                     quantization: Quantization | None = None) -> ExportManifest:
    """The export.json of an unrolled (or quantized) copy of `manifest`'s export, whose files are in `folder`."""
    versions = dict(manifest.versions)
    if quantization is not None:
        from importlib.metadata import version

        versions["onnxruntime"] = version("onnxruntime")
    return dataclasses.replace(manifest, dispatch=UNROLLED, custom_ops=[], files=file_records(folder, written),
                               source=str(source_dir.resolve()), quantization=quantization, versions=versions)


def _inline(node: onnx.NodeProto, body: onnx.FunctionProto, weight: onnx.TensorProto, prefix: str,
            writer: _DataWriter) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The function body with the node's names for its formal inputs/outputs, and per-expert MatMuls."""
    formal = dict(zip(body.input, node.input, strict=True)) | dict(zip(body.output, node.output, strict=True))
    weight_formal = body.input[OPS[node.op_type].input_names.index("weight")]
    constants = {n.output[0]: int(numpy_helper.to_array(n.attribute[0].t)) for n in body.node
                 if n.op_type == "Constant" and not n.attribute[0].t.dims}  # scalar constants: the expert ids

    def rename(name: str) -> str:
        return formal.get(name) or (prefix + name if name else name)

    slices = {}  # body value w{e} (the Gather of the weight) -> expert e
    nodes, inits = [], []
    for n in body.node:
        if weight_formal not in n.input:
            if n.op_type == "Gemm" and n.input[1] in slices:
                e = slices[n.input[1]]
                assert _attr(n, "transB") == 1 and len(n.input) == 2, f"unexpected expert Gemm in {body.name}"
                name = f"{weight.name}/expert{e}.T"
                inits.append(writer.expert_transposed(weight, e, name))
                nodes.append(helper.make_node("MatMul", [rename(n.input[0]), name], [rename(n.output[0])],
                                              name=f"{prefix}expert{e}"))
                continue
            renamed = onnx.NodeProto()
            renamed.CopyFrom(n)
            renamed.input[:] = [rename(x) for x in n.input]
            renamed.output[:] = [rename(x) for x in n.output]
            renamed.name = prefix + (n.name or n.output[0])
            nodes.append(renamed)
        elif n.op_type == "Gather" and n.input[0] == weight_formal and n.input[1] in constants:
            slices[n.output[0]] = constants[n.input[1]]
        elif n.op_type == "Shape" and list(n.input) == [weight_formal]:
            shape = numpy_helper.from_array(np.array(weight.dims, dtype=np.int64), rename(n.output[0]))
            nodes.append(helper.make_node("Constant", [], [rename(n.output[0])], name=prefix + n.output[0],
                                          value=shape))
        else:
            raise ExportError(f"{body.name}: cannot unroll a {n.op_type} node that reads the stacked weight")
    missing = set(range(weight.dims[0])) - set(slices.values())
    assert not missing, f"{body.name}: experts {sorted(missing)} have no Gather of the weight"
    return nodes, inits


def _attr(node: onnx.NodeProto, name: str) -> int | None:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


class _DataWriter:
    """Appends tensors to one external data file (page aligned), reading the source export's file with pread."""

    def __init__(self, path: Path, source_dir: Path) -> None:
        self.path, self.source_dir = path, source_dir
        self.offset = 0
        self.sources: dict[str, int] = {}  # location -> file descriptor

    def __enter__(self) -> _DataWriter:
        self.file = open(self.path, "wb")  # closed in __exit__
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        for fd in self.sources.values():
            os.close(fd)
        self.sources.clear()

    def _read(self, tensor: onnx.TensorProto, start: int = 0, length: int | None = None) -> bytes:
        """Bytes [start, start + length) of an external tensor of the source export (pread: nothing mapped)."""
        info = {e.key: e.value for e in tensor.external_data}
        location = info["location"]
        if location not in self.sources:
            self.sources[location] = os.open(self.source_dir / location, os.O_RDONLY)
        total = int(info["length"])
        length = total - start if length is None else length
        data = os.pread(self.sources[location], length, int(info.get("offset", 0)) + start)
        if len(data) != length:
            raise ExportError(f"{tensor.name}: {location} ends before the tensor's {total} bytes")
        return data

    def _append(self, data: bytes, name: str, dims: list[int], data_type: int) -> onnx.TensorProto:
        pad = -self.offset % ALIGN
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(data)
        tensor = onnx.TensorProto(name=name, dims=dims, data_type=data_type)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(len(data)))):
            tensor.external_data.add(key=key, value=value)
        self.offset += len(data)
        return tensor

    def copy(self, tensor: onnx.TensorProto) -> None:
        """Move an external tensor of the source export into this file (the tensor now points there)."""
        moved = self._append(self._read(tensor), tensor.name, list(tensor.dims), tensor.data_type)
        del tensor.external_data[:]
        tensor.external_data.extend(moved.external_data)

    def expert_transposed(self, weight: onnx.TensorProto, e: int, name: str) -> onnx.TensorProto:
        """weight[e].T as a new [in, out] initializer: MatMul's B, the layout quantizers rewrite."""
        dtype = np.dtype(dtypes.dtype(weight.data_type, (dtypes.FP32, dtypes.FP16), what=f"{weight.name}'s type "
                                      "(unrolling supports fp32 and fp16 weights)").numpy)
        _, N, D = weight.dims
        size = N * D * dtype.itemsize
        expert = np.frombuffer(self._read(weight, e * size, size), dtype=dtype).reshape(N, D)  # [N, D]
        return self._append(np.ascontiguousarray(expert.T).tobytes(), name, [D, N], weight.data_type)
