"""TensorRT-compatibility lint for an exported graph (`jetmoe lint model.onnx`), from the transcribed table.

Every node of the main graph must be an op TensorRT's ONNX parser supports for its data type (the published
table in `trt_operators`) or a `jetmoe` plugin node that keeps the op contract; no op with a data-dependent
output shape may sit on the main path. Local-function bodies are not linted: TensorRT runs the plugins instead.

`If` is the one exception to "data-dependent": an `If` whose branches provably give the same output shapes
(ONNX shape inference merges them into a shape with every dimension known, symbolically or as a number; a
branch of another shape would leave a dimension unknown) has a shape that does not depend on the condition, only
its values do, and TensorRT builds both branches as one conditional. Its branch nodes are linted like main-graph
nodes. The portable dispatch (export/portable.py) switches on T this way.

`check_dispatch` checks the `jetmoe` nodes and local functions against the dispatch export.json records (or, with
no export.json, against what the graph itself says): it catches a plugin export whose functions a tool inlined or
dropped after `jetmoe export` (docs/ops.md, "Tools that inline the local functions"), and names the tool. Its count
of the nodes expected comes from export.json, or else from the layers the graph names (`model.layers.<i>.` weights,
`past_key_values.<i>.` inputs), which every one of those tools keeps.

engines/lint.py runs TensorRT's own parser where one is importable and falls back to this table.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import onnx

from export import schema, trt_operators
from export.manifest import UNROLLED
from jetmoe.errors import ExportError
from jetmoe.op_contract import OPS

# Ops whose first input is not the data whose type the table lists: check their output instead.
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "EyeLike", "Range"}
_PLUGIN_FIELD_TYPES = {onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.INTS,
                       onnx.AttributeProto.FLOATS}
TABLE_CHECK = f"TensorRT {trt_operators.TRT_VERSION} ONNX operator table (transcribed)"
NODES_PER_LAYER = 4  # expert_map and expert_reduce, in MoA and in MoE
DISPATCH_KEY = "jetmoe.dispatch"  # model metadata of export/unrolled.py's copies: "unrolled"
_LAYER = re.compile(r"^(?:model\.layers|past_key_values)\.(\d+)\.")
INLINED = ("a tool inlined the jetmoe local functions into standard ops after `jetmoe export`: onnxscript.optimizer"
           ".optimize (inline=True is its default: pass inline=False), onnx.inliner.inline_local_functions, or an "
           "ONNX Runtime session's optimized_model_filepath. TensorRT then meets their NonZero bodies instead of the "
           "plugins; use the model.onnx `jetmoe export` wrote, or export --dispatch portable for a plugin-free graph")
DROPPED = ("ONNX Runtime cannot run these nodes, and TensorRT has no fallback body for them. A tool dropped the "
           "local functions after `jetmoe export` (onnx.version_converter drops function bodies and keeps the "
           "nodes): export again with `jetmoe export --opset N` instead of converting the file")
ORT_GRAPH = "ort-graph"  # `dispatch` for export/ort_graph.py's model.ort.onnx, which export.json does not describe
ONNX_RUNTIME_ONLY = (UNROLLED, ORT_GRAPH)  # graphs that are not for TensorRT: the lint says so and parses nothing
ORT_GRAPH_NOTE = ("model.ort.onnx is the graph `jetmoe export` writes beside model.onnx for ONNX Runtime (functions "
                  "expanded, per-expert views into the weights; export/ort_graph.py): TensorRT takes model.onnx")
UNROLLED_NOTE = ("this is an ONNX Runtime-only copy (export/unrolled.py, `jetmoe quantize`: each expert a MatMul on "
                 "its own weight); TensorRT needs the plugin-dispatch (or portable) export from `jetmoe export`")


@dataclasses.dataclass
class LintIssue:
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op}): {self.message}"


@dataclasses.dataclass
class LintReport:
    issues: list[LintIssue]
    nodes: int
    check: str = TABLE_CHECK  # which check ran: the table, or "<flavour> <version> ONNX parser"
    notes: list[str] = dataclasses.field(default_factory=list)  # verdicts worth seeing when it passes

    def __bool__(self) -> bool:
        return not self.issues

    def __str__(self) -> str:
        if not self.issues:
            lines = [f"TensorRT lint passed: {self.nodes} nodes checked by the {self.check}"]
        else:
            lines = [f"TensorRT lint failed: {len(self.issues)} problem(s) in {self.nodes} nodes ({self.check})"]
            lines += [f"  {issue}" for issue in self.issues]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def load_graph(path: Path) -> onnx.ModelProto:
    """model.onnx without its weights; ExportError (one line) when the file is not a readable ONNX model."""
    try:
        return onnx.load(path, load_external_data=False)
    except FileNotFoundError:
        raise ExportError(f"no ONNX model at {path}") from None
    except Exception as e:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise ExportError(f"{path} is not a readable ONNX model (truncated or another format?): "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'cannot parse'}") from None


def lint_model(model: onnx.ModelProto, dispatch: str | None = None, num_layers: int | None = None) -> LintReport:
    """The table check of every main-graph node (and every `If` branch node), and `check_dispatch` with what
    export.json records (None: no export.json)."""
    issues = check_dispatch(model, dispatch, num_layers)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx"))
    if version is None or not trt_operators.OPSET_MIN <= version <= trt_operators.OPSET_MAX:
        issues.append(LintIssue("<model>", "opset_import", f"default-domain opset {version} is outside TensorRT "
                                f"{trt_operators.TRT_VERSION}'s {trt_operators.OPSET_MIN}..{trt_operators.OPSET_MAX}"))
    types, shapes = _value_types(model)
    for i, node in enumerate(model.graph.node):
        name = node.name or f"#{i}"
        if node.domain in ("", "ai.onnx"):
            issues += _check_standard(node, name, types, shapes)
        elif node.domain == schema.DOMAIN:
            issues += _check_plugin(node, name)
        else:
            issues.append(LintIssue(name, f"{node.domain}::{node.op_type}",
                                    f"domain {node.domain!r} is neither standard ONNX nor the {schema.DOMAIN!r} "
                                    "plugin domain; TensorRT's parser has no importer for it"))
    return LintReport(issues, len(model.graph.node))


def _check_standard(node: onnx.NodeProto, name: str, types: dict[str, int],
                    shapes: dict[str, onnx.TensorShapeProto | None]) -> list[LintIssue]:
    op = node.op_type
    if op == "If":
        return _check_if(node, name, types, shapes)
    if op in trt_operators.DATA_DEPENDENT_SHAPE_OPS:
        return [LintIssue(name, op, "data-dependent output shape on the main path")]
    if op not in trt_operators.SUPPORTED:
        state = "marked unsupported" if op in trt_operators.UNSUPPORTED else "not listed"
        return [LintIssue(name, op, f"{state} in TensorRT {trt_operators.TRT_VERSION}'s ONNX operator table")]
    tensor = node.output[0] if op in _OUTPUT_TYPED or not node.input else node.input[0]
    elem = types.get(tensor)
    if elem is None or not tensor:
        return []
    type_name = onnx.TensorProto.DataType.Name(elem)
    if type_name not in trt_operators.SUPPORTED[op]:
        return [LintIssue(name, op, f"type {type_name} of {tensor!r} is not among TensorRT's supported types "
                                    f"{sorted(trt_operators.SUPPORTED[op])}")]
    return []


def _check_if(node: onnx.NodeProto, name: str, types: dict[str, int],
              shapes: dict[str, onnx.TensorShapeProto | None]) -> list[LintIssue]:
    """An If whose outputs have one shape whichever branch runs, and whose branch nodes pass the table."""
    issues = []
    for out in node.output:
        shape = shapes.get(out)
        if shape is None or not all(d.dim_param or d.HasField("dim_value") for d in shape.dim):
            issues.append(LintIssue(name, "If", f"output {out!r} has no shape common to both branches (shape "
                                                "inference leaves a dimension or the rank unknown): data-dependent"))
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            for i, inner in enumerate(attr.g.node):
                inner_name = inner.name or f"{name}/{attr.name}#{i}"
                if inner.domain not in ("", "ai.onnx"):
                    issues.append(LintIssue(inner_name, f"{inner.domain}::{inner.op_type}",
                                            f"custom node inside the {attr.name} of an If"))
                    continue
                issues += _check_standard(inner, inner_name, types, shapes)
    return issues


def check_dispatch(model: onnx.ModelProto, dispatch: str | None = None, num_layers: int | None = None
                   ) -> list[LintIssue]:
    """The `jetmoe` nodes and local functions against the dispatch (and layer count) export.json records; with
    no export.json (None), against the graph's own layers, once it looks like a plugin export (a `jetmoe` node or
    opset import left, or a jetmoe-trt model with NonZero on its main graph, as the inlined bodies leave)."""
    nodes = [n for n in model.graph.node if n.domain == schema.DOMAIN]
    functions = {f.name for f in model.functions if f.domain == schema.DOMAIN}
    metadata = {p.key: p.value for p in model.metadata_props}
    if dispatch == UNROLLED or (dispatch is None and metadata.get(DISPATCH_KEY) == UNROLLED):
        return [LintIssue("<model>", "dispatch", UNROLLED_NOTE)]
    if dispatch == ORT_GRAPH:
        return [LintIssue("<model>", "dispatch", ORT_GRAPH_NOTE)]
    if dispatch == "portable":
        if nodes or functions:
            return [LintIssue("<model>", "dispatch", f"export.json records the portable dispatch, but the graph "
                              f"has {len(nodes)} {schema.DOMAIN} nodes and functions {sorted(functions)}: "
                              "export.json does not describe this model.onnx")]
        return []
    issues = []
    if dispatch is None:
        plugin_like = nodes or any(o.domain == schema.DOMAIN for o in model.opset_import) or (
            model.producer_name == "jetmoe-trt" and any(n.op_type == "NonZero" for n in model.graph.node))
        num_layers = expected_layers(model) if plugin_like else 0
    if num_layers:
        expected = NODES_PER_LAYER * num_layers
        if dispatch == "plugin":
            count = (f"export.json records the plugin dispatch and {num_layers} layers, so {expected} "
                     f"{schema.DOMAIN} nodes are expected; the graph has {len(nodes)}")
        else:
            count = (f"{len(nodes)} of the {expected} {schema.DOMAIN} nodes expected for the {num_layers} layers the "
                     "graph names are left")
        if len(nodes) != expected:
            issues.append(LintIssue("<model>", "dispatch", count + (f": {INLINED}" if len(nodes) < expected else "")))
    missing = sorted({n.op_type for n in nodes if n.op_type in OPS} - functions)
    if missing:
        issues.append(LintIssue("<model>", "dispatch", "no local function for "
                                f"{', '.join(f'{schema.DOMAIN}::{op}' for op in missing)}: {DROPPED}"))
    return issues


def expected_layers(model: onnx.ModelProto) -> int:
    """Decoder layers the graph names (HF weight names, past KV inputs); 0 if it names none."""
    names = [t.name for t in model.graph.initializer] + [v.name for v in model.graph.input]
    indices = {int(m.group(1)) for m in map(_LAYER.match, names) if m}
    return max(indices) + 1 if indices else 0


def _check_plugin(node: onnx.NodeProto, name: str) -> list[LintIssue]:
    op = f"{node.domain}::{node.op_type}"
    spec = OPS.get(node.op_type)
    if spec is None:
        return [LintIssue(name, op, f"unknown {schema.DOMAIN} op; the contract has {sorted(OPS)}")]
    issues = []
    if len(node.input) != len(spec.inputs) or len(node.output) != len(spec.outputs):
        issues.append(LintIssue(name, op, f"takes {len(spec.inputs)} inputs and {len(spec.outputs)} outputs, "
                                          f"has {len(node.input)} and {len(node.output)}"))
    attrs = {a.name: a for a in node.attribute}
    for key, expected in schema.node_attributes(spec).items():
        got = onnx.helper.get_attribute_value(attrs[key]).decode() if key in attrs else None
        if got != expected:
            issues.append(LintIssue(name, op, f"attribute {key}={got!r}, expected {expected!r}"))
    for attr in attrs.values():
        if attr.name not in schema.PARSER_ATTRIBUTES and attr.type not in _PLUGIN_FIELD_TYPES:
            issues.append(LintIssue(name, op, f"attribute {attr.name} has type "
                                    f"{onnx.AttributeProto.AttributeType.Name(attr.type)}; plugin fields must be "
                                    "INT, FLOAT, INTS or FLOATS"))
    return issues


def _value_types(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, onnx.TensorShapeProto | None]]:
    """Element type and shape (None: rank unknown) of every named value the graph (and its If branches)
    declares or shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except onnx.shape_inference.InferenceError:
        inferred = model
    types: dict[str, int] = {}
    shapes: dict[str, onnx.TensorShapeProto | None] = {}
    graphs = [inferred.graph]
    while graphs:
        graph = graphs.pop()
        for t in graph.initializer:
            types[t.name] = t.data_type
        for value in (*graph.input, *graph.output, *graph.value_info):
            tensor = value.type.tensor_type
            if tensor.elem_type:
                types[value.name] = tensor.elem_type
            shapes[value.name] = tensor.shape if tensor.HasField("shape") else None
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        types[node.output[0]] = attr.t.data_type
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return types, shapes
