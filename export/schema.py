"""The ONNX side of the op contract (jetmoe/op_contract.py, docs/ops.md): schemas and node attributes.

A `jetmoe` node carries `plugin_namespace` and `plugin_version` (STRING attributes read by TensorRT's ONNX parser
to find the plugin; they are not plugin fields) and nothing else: the ops need no INT/FLOAT attributes, every
size comes from the input shapes.
"""

from __future__ import annotations

import onnx

from jetmoe.op_contract import NAMESPACE, ONNX_OPSET_VERSION, OPS, VERSION, OpSpec

DOMAIN = NAMESPACE  # no dots: a TensorRT plugin namespace cannot contain one
PARSER_ATTRIBUTES = {"plugin_namespace": NAMESPACE, "plugin_version": VERSION}


def node_attributes(op: OpSpec) -> dict[str, str]:
    """The attributes every `jetmoe` node of `op` carries (today the same for both ops)."""
    return dict(PARSER_ATTRIBUTES)


def register_schemas() -> None:
    """Register the ops with onnx.defs (idempotent); the exporter's onnxscript calls need a schema."""
    param = onnx.defs.OpSchema.FormalParameter
    attr = onnx.defs.OpSchema.Attribute
    for op in OPS.values():
        if onnx.defs.has(op.name, DOMAIN):
            continue
        kinds = {t.kind: [d.onnx_type for d in t.dtypes] for t in op.inputs}
        onnx.defs.register_schema(onnx.defs.OpSchema(
            op.name, DOMAIN, ONNX_OPSET_VERSION,
            inputs=[param(t.name, t.kind) for t in op.inputs],
            outputs=[param(t.name, t.kind) for t in op.outputs],
            type_constraints=[(kind, types, f"{kind} tensors") for kind, types in kinds.items()],
            attributes=[attr(name, onnx.defs.OpSchema.AttrType.STRING, "read by TensorRT's ONNX parser")
                        for name in node_attributes(op)],
        ))
