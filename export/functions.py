"""Reference bodies for the `jetmoe` ops as ONNX local functions, so ONNX Runtime runs the file as is.

TensorRT replaces the nodes with plugins; ONNX Runtime inlines these. Both bodies share one grouped GEMM,
unrolled over the E experts (E is fixed per model): for each expert, the (token, slot) rows routed to it
(NonZero), their inputs gathered, one Gemm with that expert's weight slice; then one ScatterND puts every row
back in (token, slot) order. `Gather(weight, e)` of an initializer with a constant e is folded by ONNX Runtime
into a per-expert initializer, so no weights are copied per call, and only the selected experts' work is done.
The reduce then weights the rows by their gates and sums each token's K slots (ReduceSum: unlike
ScatterND(reduction="add") it has fp16 kernels in ONNX Runtime's CPU provider).
"""

from __future__ import annotations

import onnx
from onnx import helper

from export.schema import DOMAIN, node_attributes
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, OpSpec


class _Body:
    """Collects nodes; each call adds one node and returns its output name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []

    def __call__(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], **attrs))
        return name

    def ints(self, name: str, values: list[int]) -> str:
        return self("Constant", [], name, value=helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], values))

    def shape_dim(self, tensor: str, axis: int, name: str) -> str:
        """Size of `tensor` along `axis` as int64 [1]."""
        return self("Gather", [self("Shape", [tensor], f"{name}_shape_of"), self.ints(f"{name}_axis", [axis])], name)


def _grouped_gemm(b: _Body, rows_source: str, expert_idx: str, weight: str, num_experts: int,
                  source_is_per_token: bool) -> str:
    """[T*K, out] in (token, slot) order: row r = weight[expert of r] @ source row.

    The source row of (token, slot) row r is `rows_source[r // K]` when the source holds one row per token
    (map: x [T, D]) and `rows_source[r]` when it holds one per (token, slot) (reduce: h flattened [T*K, N]).
    """
    minus_one = b.ints("minus_one", [-1])
    flat_idx = b("Reshape", [expert_idx, minus_one], "flat_idx")  # [T*K]
    k = b.shape_dim(expert_idx, 1, "k")
    all_rows, all_y = [], []
    for e in range(num_experts):
        e_const = b("CastLike", [b("Constant", [], f"e{e}", value=helper.make_tensor(f"e{e}", onnx.TensorProto.INT64,
                                                                                        [], [e])), flat_idx], f"e{e}_t")
        hits = b("NonZero", [b("Equal", [flat_idx, e_const], f"is{e}")], f"hits{e}")  # [1, n]
        rows = b("Reshape", [hits, minus_one], f"rows{e}")  # [n] (token, slot) rows routed to e
        source = b("Div", [rows, k], f"tok{e}") if source_is_per_token else rows
        inputs = b("Gather", [rows_source, source], f"in{e}", axis=0)  # [n, in]
        w_e = b("Gather", [weight, f"e{e}"], f"w{e}", axis=0)  # [out, in]; a constant once ORT folds it
        all_rows.append(rows)
        all_y.append(b("Gemm", [inputs, w_e], f"y{e}", transB=1))  # [n, out]
    rows = b("Unsqueeze", [b("Concat", all_rows, "rows", axis=0), minus_one], "rows_2d")  # [T*K, 1]
    y_sorted = b("Concat", all_y, "y_sorted", axis=0)  # [T*K, out] in expert order
    out_shape = b("Concat", [b("Shape", [flat_idx], "tk"), b.shape_dim(weight, 1, "out")], "out_shape", axis=0)
    zeros = b("Expand", [b("CastLike", [b("Constant", [], "zero", value=helper.make_tensor(
        "zero", onnx.TensorProto.FLOAT, [], [0.0])), rows_source], "zero_t"), out_shape], "zeros")
    return b("ScatterND", [zeros, rows, y_sorted], "y_flat")  # every row written once


def expert_map_function(num_experts: int, opset: int) -> onnx.FunctionProto:
    b = _Body()
    y_flat = _grouped_gemm(b, "x", "expert_idx", "weight", num_experts, source_is_per_token=True)
    y_shape = b("Concat", [b("Shape", ["expert_idx"], "tk_shape"), b.shape_dim("weight", 1, "n")], "y_shape", axis=0)
    b("Reshape", [y_flat, y_shape], "y")  # [T, K, N]
    return _function(EXPERT_MAP, b, opset)


def expert_reduce_function(num_experts: int, opset: int) -> onnx.FunctionProto:
    b = _Body()
    h_shape = b("Concat", [b.ints("h_minus_one", [-1]), b.shape_dim("h", 2, "n")], "h_flat_shape", axis=0)
    h_flat = b("Reshape", ["h", h_shape], "h_flat")  # [T*K, N]
    y_flat = _grouped_gemm(b, h_flat, "expert_idx", "weight", num_experts, source_is_per_token=False)  # [T*K, D]
    gates = b("Reshape", ["gates", b.ints("column", [-1, 1])], "gates_flat")  # [T*K, 1]
    gated = b("Mul", [y_flat, gates], "gated")
    tkd = b("Concat", [b("Shape", ["expert_idx"], "tk_shape"), b("Shape", ["bias"], "d")], "tkd", axis=0)
    summed = b("ReduceSum", [b("Reshape", [gated, tkd], "gated_tkd"), b.ints("slot_axis", [1])], "summed",
               keepdims=0)  # [T, D]
    b("Add", [summed, "bias"], "y")
    return _function(EXPERT_REDUCE, b, opset)


def _function(op: OpSpec, body: _Body, opset: int) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, op.name, list(op.input_names), list(op.output_names), body.nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=list(node_attributes(op)),
    )


def local_functions(num_experts: int, opset: int) -> list[onnx.FunctionProto]:
    return [expert_map_function(num_experts, opset), expert_reduce_function(num_experts, opset)]
