"""TensorRT-compatibility lint for an exported graph (`jetmoe lint model.onnx`).

Every node of the main graph must be an op TensorRT's ONNX parser supports for its data type (the published
table in `trt_operators`) or a `jetmoe` plugin node that keeps the op contract; no op with a data-dependent
output shape may sit on the main path. Local-function bodies are not linted: TensorRT runs the plugins instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from export import schema, trt_operators
from jetmoe.errors import ExportError
from jetmoe.op_contract import OPS

# Ops whose first input is not the data whose type the table lists: check their output instead.
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "RandomNormal", "RandomUniform", "EyeLike", "Range"}
_PLUGIN_FIELD_TYPES = {onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.INTS,
                       onnx.AttributeProto.FLOATS}


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

    def __bool__(self) -> bool:
        return not self.issues

    def __str__(self) -> str:
        if not self.issues:
            return f"TensorRT lint passed: {self.nodes} nodes checked against TensorRT {trt_operators.TRT_VERSION}"
        lines = [f"TensorRT lint failed: {len(self.issues)} problem(s) in {self.nodes} nodes "
                 f"(TensorRT {trt_operators.TRT_VERSION} ONNX operator table)"]
        return "\n".join(lines + [f"  {issue}" for issue in self.issues])


def load_graph(path: Path) -> onnx.ModelProto:
    """model.onnx without its weights; ExportError (one line) when the file is not a readable ONNX model."""
    try:
        return onnx.load(path, load_external_data=False)
    except FileNotFoundError:
        raise ExportError(f"no ONNX model at {path}") from None
    except Exception as e:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise ExportError(f"{path} is not a readable ONNX model (truncated or another format?): "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'cannot parse'}") from None


def lint_model(model: onnx.ModelProto) -> LintReport:
    issues: list[LintIssue] = []
    opsets = {o.domain or "": o.version for o in model.opset_import}
    version = opsets.get("", opsets.get("ai.onnx"))
    if version is None or not trt_operators.OPSET_MIN <= version <= trt_operators.OPSET_MAX:
        issues.append(LintIssue("<model>", "opset_import", f"default-domain opset {version} is outside TensorRT "
                                f"{trt_operators.TRT_VERSION}'s {trt_operators.OPSET_MIN}..{trt_operators.OPSET_MAX}"))
    types = _value_types(model)
    functions = {(f.domain, f.name) for f in model.functions}
    for i, node in enumerate(model.graph.node):
        name = node.name or f"#{i}"
        if node.domain in ("", "ai.onnx"):
            issues += _check_standard(node, name, types)
        elif node.domain == schema.DOMAIN:
            issues += _check_plugin(node, name, functions)
        else:
            issues.append(LintIssue(name, f"{node.domain}::{node.op_type}",
                                    f"domain {node.domain!r} is neither standard ONNX nor the {schema.DOMAIN!r} "
                                    "plugin domain; TensorRT's parser has no importer for it"))
    return LintReport(issues, len(model.graph.node))


def _check_standard(node: onnx.NodeProto, name: str, types: dict[str, int]) -> list[LintIssue]:
    op = node.op_type
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


def _check_plugin(node: onnx.NodeProto, name: str, functions: set[tuple[str, str]]) -> list[LintIssue]:
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
    if (node.domain, node.op_type) not in functions:
        issues.append(LintIssue(name, op, "no local function with this name: ONNX Runtime cannot run the node"))
    return issues


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named value the graph declares or shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except onnx.shape_inference.InferenceError:
        inferred = model
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types
