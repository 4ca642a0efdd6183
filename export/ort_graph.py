"""`model.ort.onnx`: the export's graph for ONNX Runtime, beside the TensorRT graph, sharing model.onnx.data.

Written by every plugin-dispatch export (export/exporter.py) and recorded in export.json; `OnnxrtRunner` runs it
instead of model.onnx. A portable export (`--dispatch portable`, export/portable.py) gets none: its model.onnx has
no `jetmoe` nodes and no local functions, and ONNX Runtime runs it as is.

ONNX Runtime on the TensorRT graph (`model.onnx`) inlines the `jetmoe` local functions, whose
`Gather(stacked weight [E, N, D], constant e)` it folds at session creation into a copy of every expert's slice
(and, where its CPU provider has no fp16 kernel, into an fp32 copy: 2x the fp16 weights, held for good). This
graph has nothing to fold or copy:

- each `jetmoe` node is expanded in place into standard ops (the functions' grouped GEMM: per expert the rows
  routed to it, one Gemm, one ScatterND back), with each expert's Gemm behind an `If` on its row count, so an
  expert no token chose costs nothing (and in fp16 its weights are not converted);
- each expert's weight is its own initializer `NAME[e]` whose external data is that expert's byte range of the
  stacked tensor in the same model.onnx.data (a view: offset + e * slice bytes);
- `MatMul(x, Transpose(W))` of a 2-D weight (kv_proj, a tied lm_head) becomes `FusedMatMul(x, W, transB=1)`;
- every expert view is also a graph input (an overridable initializer): ONNX Runtime neither folds nor prepacks
  an overridable initializer, so the experts (94% of jetmoe-8b's bytes) stay in the stored dtype, in the pages
  it maps from model.onnx.data (ORT 1.32 on CPU maps page-aligned external data rather than copying it). Where
  its CPU provider has no fp16 kernel (Gemm and MatMul on x86), a routed expert is converted per call. The dense
  weights (embeddings, kv_proj, routers: 6%) stay constant: ONNX Runtime converts or prepacks them once.

    make_ort_graph("out")           # out/model.onnx -> out/model.ort.onnx
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper

from export.manifest import MODEL_NAME
from export.schema import DOMAIN
from jetmoe.errors import ExportError
from jetmoe.fileio import atomic_write_bytes
from jetmoe.op_contract import OPS

ORT_MODEL_NAME = "model.ort.onnx"
MS_DOMAIN = "com.microsoft"


def make_ort_graph(export_dir: str | os.PathLike) -> Path:
    """Write model.ort.onnx, the ONNX Runtime graph of the plugin-dispatch model.onnx in `export_dir`; return its
    path. Only the graph is written: its weights are model.onnx.data's."""
    export_dir = Path(export_dir)
    proto = onnx.load(export_dir / MODEL_NAME, load_external_data=False)
    graph = proto.graph
    weights = {t.name: t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    views: dict[str, list[str]] = {}  # stacked weight -> its experts' initializer names
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain == DOMAIN:
            weight = node.input[OPS[node.op_type].input_names.index("weight")]
            if weight not in weights:
                raise ExportError(f"{node.op_type} node {node.name} reads {weight}, which is no external weight")
            if weight not in views:
                views[weight] = _add_views(graph, weights[weight])
            nodes.extend(_expand(node, views[weight], list(weights[weight].dims[1:]), weights[weight].data_type))
        else:
            nodes.append(node)
    nodes = _fuse_transposed_matmuls(nodes, weights)
    del graph.node[:]
    graph.node.extend(nodes)

    used = {name for node in graph.node for name in node_reads(node)} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    expert_views = {name for names in views.values() for name in names}
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in kept
                       if t.name in expert_views)
    del proto.functions[:]
    opsets = [o for o in proto.opset_import if o.domain not in (DOMAIN, MS_DOMAIN)]
    del proto.opset_import[:]
    proto.opset_import.extend(opsets + [helper.make_opsetid(MS_DOMAIN, 1)])
    path = export_dir / ORT_MODEL_NAME
    atomic_write_bytes(path, proto.SerializeToString())
    onnx.checker.check_model(str(path))  # by path: the external data is checked against the folder
    return path


# ---- per-expert views ---------------------------------------------------------------------------------


def _add_views(graph: onnx.GraphProto, stacked: onnx.TensorProto) -> list[str]:
    """One initializer per expert over its slice of the stacked [E, N, D] tensor's bytes, same file."""
    info = {entry.key: entry.value for entry in stacked.external_data}
    offset, length = int(info.get("offset", 0)), int(info["length"])
    experts = stacked.dims[0]
    if length % experts:
        raise ExportError(f"{stacked.name}: {length} bytes do not split into {experts} experts")
    step = length // experts
    names = []
    for e in range(experts):
        view = onnx.TensorProto(name=f"{stacked.name}[{e}]", data_type=stacked.data_type, dims=stacked.dims[1:])
        view.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", info["location"]), ("offset", str(offset + e * step)),
                           ("length", str(step))):
            view.external_data.add(key=key, value=value)
        graph.initializer.append(view)
        names.append(view.name)
    return names


# ---- the expansion of a jetmoe node -------------------------------------------------------------------


class _Nodes:
    """Collects nodes whose outputs are named `<prefix>/<name>` (unique in the main graph)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []

    def __call__(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        out = f"{self.prefix}/{name}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def const(self, name: str, values: list[int], scalar: bool = False) -> str:
        tensor = helper.make_tensor(name, onnx.TensorProto.INT64, [] if scalar else [len(values)], values)
        return self("Constant", [], name, value=tensor)


def _expand(node: onnx.NodeProto, expert_weights: list[str], slice_dims: list[int], dtype: int,
            ) -> list[onnx.NodeProto]:
    """The op in standard ops (docs/ops.md), as export/functions.py's bodies, with per-expert weights and each
    expert's GEMM behind an `If` on its row count."""
    b = _Nodes(node.output[0])
    names = dict(zip(OPS[node.op_type].input_names, node.input, strict=True))
    out_dim = slice_dims[0]
    minus_one = b.const("minus_one", [-1])
    flat_idx = b("Reshape", [names["expert_idx"], minus_one], "flat_idx")  # [T*K]
    k = b("Gather", [b("Shape", [names["expert_idx"]], "idx_shape"), b.const("one", [1])], "k")  # [1]
    if node.op_type == "expert_map":
        source = names["x"]  # [T, D]: (token, slot) row r reads token r // K
    else:
        n = b("Gather", [b("Shape", [names["h"]], "h_shape"), b.const("two", [2])], "n")
        source = b("Reshape", [names["h"], b("Concat", [minus_one, n], "h_flat_shape", axis=0)], "h_flat")
    zero_rows = b("Constant", [], "no_rows", value=helper.make_tensor("no_rows", onnx.TensorProto.INT64, [2],
                                                                       [0, out_dim]))
    zero = b("CastLike", [b("Constant", [], "zero", value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [],
                                                                             [0.0])), source], "zero_t")
    all_rows, all_y = [], []
    for e, weight in enumerate(expert_weights):
        e_const = b("CastLike", [b.const(f"e{e}", [e], scalar=True), flat_idx], f"e{e}_t")
        rows = b("Reshape", [b("NonZero", [b("Equal", [flat_idx, e_const], f"is{e}")], f"hits{e}"), minus_one],
                 f"rows{e}")  # [n_e] (token, slot) rows routed to e
        src = b("Div", [rows, k], f"tok{e}") if node.op_type == "expert_map" else rows
        count = b("Size", [rows], f"count{e}")
        then = _Nodes(f"{b.prefix}/then{e}")
        then("Gemm", [then("Gather", [source, src], "in", axis=0), weight], "y", transB=1)  # [n_e, out]
        other = _Nodes(f"{b.prefix}/else{e}")
        other("Expand", [zero, zero_rows], "y")  # [0, out]
        y = b("If", [b("Greater", [count, b.const(f"none{e}", [0], scalar=True)], f"any{e}")], f"y{e}",
              then_branch=_branch(then, f"expert{e}_then", dtype), else_branch=_branch(other, f"expert{e}_else", dtype))
        all_rows.append(rows)
        all_y.append(y)
    rows = b("Unsqueeze", [b("Concat", all_rows, "rows", axis=0), minus_one], "rows_2d")  # [T*K, 1]
    y_sorted = b("Concat", all_y, "y_sorted", axis=0)  # [T*K, out] in expert order
    out_shape = b("Concat", [b("Shape", [flat_idx], "tk"), b.const("out", [out_dim])], "out_shape", axis=0)
    y_flat = b("ScatterND", [b("Expand", [zero, out_shape], "zeros"), rows, y_sorted], "y_flat")
    if node.op_type == "expert_map":
        y_shape = b("Concat", [b("Shape", [names["expert_idx"]], "tk_shape"), b.const("n_out", [out_dim])],
                    "y_shape", axis=0)
        b.nodes.append(helper.make_node("Reshape", [y_flat, y_shape], [node.output[0]], name=f"{b.prefix}/y"))
        return b.nodes
    gated = b("Mul", [y_flat, b("Reshape", [names["gates"], b.const("column", [-1, 1])], "gates_flat")], "gated")
    tkd = b("Concat", [b("Shape", [names["expert_idx"]], "tk_shape"), b("Shape", [names["bias"]], "d")], "tkd",
            axis=0)
    summed = b("ReduceSum", [b("Reshape", [gated, tkd], "gated_tkd"), b.const("slot_axis", [1])], "summed",
               keepdims=0)  # [T, D]
    b.nodes.append(helper.make_node("Add", [summed, names["bias"]], [node.output[0]], name=f"{b.prefix}/y"))
    return b.nodes


def _branch(body: _Nodes, name: str, dtype: int) -> onnx.GraphProto:
    return helper.make_graph(body.nodes, name, [], [helper.make_tensor_value_info(body.nodes[-1].output[0], dtype,
                                                                                  None)])


def _fuse_transposed_matmuls(nodes: list[onnx.NodeProto], weights: dict[str, onnx.TensorProto],
                             ) -> list[onnx.NodeProto]:
    """MatMul(x, Transpose(W)) of a 2-D weight -> FusedMatMul(x, W, transB=1): ONNX Runtime would fold the
    Transpose into a transposed copy of W."""
    transposed = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Transpose" and n.input[0] in weights
                  and len(weights[n.input[0]].dims) == 2}
    consumers = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    fusable = {out for out in transposed
               if all(c.op_type == "MatMul" and list(c.input).index(out) == 1 for c in consumers.get(out, []))}
    out = []
    for n in nodes:
        if n.op_type == "Transpose" and n.output[0] in fusable:
            continue
        if n.op_type == "MatMul" and n.input[1] in fusable:
            n = helper.make_node("FusedMatMul", [n.input[0], transposed[n.input[1]]], list(n.output), name=n.name,
                                 domain=MS_DOMAIN, transB=1)
        out.append(n)
    return out


def node_reads(node: onnx.NodeProto):
    """Every value a node reads, its subgraphs' outer-scope reads included."""
    yield from node.input
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            for inner in attr.g.node:
                yield from node_reads(inner)
