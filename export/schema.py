"""The ONNX side of the op contract (docs/ops.md): names, inputs, attributes of the `jetmoe` nodes.

A `jetmoe` node carries `plugin_namespace` and `plugin_version` (STRING attributes read by TensorRT's ONNX parser
to find the plugin; they are not plugin fields) and nothing else: the ops need no INT/FLOAT attributes, every
size comes from the input shapes.
"""

from __future__ import annotations

import dataclasses

import onnx

DOMAIN = "jetmoe"  # no dots: a TensorRT plugin namespace cannot contain one
PLUGIN_NAMESPACE = "jetmoe"
PLUGIN_VERSION = "1"
OPSET_VERSION = 1  # of the `jetmoe` domain
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")
INDEX_TYPES = ("tensor(int32)", "tensor(int64)")


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def attributes(self) -> dict[str, str]:
        return {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}


EXPERT_MAP = OpSpec("expert_map", ("x", "expert_idx", "weight"), ("y",))
EXPERT_REDUCE = OpSpec("expert_reduce", ("h", "expert_idx", "gates", "weight", "bias"), ("y",))
OPS = {op.name: op for op in (EXPERT_MAP, EXPERT_REDUCE)}


def register_schemas() -> None:
    """Register the ops with onnx.defs (idempotent); the exporter's onnxscript calls need a schema."""
    param = onnx.defs.OpSchema.FormalParameter
    attr = onnx.defs.OpSchema.Attribute
    for op in OPS.values():
        if onnx.defs.has(op.name, DOMAIN):
            continue
        onnx.defs.register_schema(onnx.defs.OpSchema(
            op.name, DOMAIN, OPSET_VERSION,
            inputs=[param(name, "I" if name == "expert_idx" else "T") for name in op.inputs],
            outputs=[param(name, "T") for name in op.outputs],
            type_constraints=[("T", list(FLOAT_TYPES), "activations and weights"),
                              ("I", list(INDEX_TYPES), "expert indices")],
            attributes=[attr(name, onnx.defs.OpSchema.AttrType.STRING, "read by TensorRT's ONNX parser")
                        for name in op.attributes],
        ))
