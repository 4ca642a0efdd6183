"""The plugin-free expert dispatch (`jetmoe export --dispatch portable`): both `jetmoe` ops in standard ONNX ops.

No NonZero, Loop or other data-dependent shape: every intermediate's shape follows from T, K and the weights', so
TensorRT and TensorRT-RTX build it without a plugin, and ONNX Runtime runs it as is. Two bodies per op:

    gather  (decode sizes)  Gather(weight, expert_idx) -> the T*K selected matrices [T, K, out, in], one batched
                            MatMul: only the selected experts' weights are read (and copied once).
    dense   (prefill sizes) every expert on every token: MatMul(weight [E, out, in], x^T) -> [E, out, T], then the
                            K selected rows picked (map) or weighted by a [T, E] gate matrix that is zero off the
                            selection (reduce). Each weight is read once, never copied per token; E/K the FLOPs.
    switch                  `If(T <= gather_max_tokens)` between the two, inside the graph: what the exporter writes.

Numerics follow the torch ops (jetmoe/ops.py): map is `weight[e] @ x[t]`; reduce gates each expert's output after
its matmul and sums a token's experts (gather: ReduceSum over the K slots; dense: over E terms of which E - K are
exact zeros, in expert order, as `index_add` over rows sorted by expert).

`inline_portable(model, ...)` replaces each exported `jetmoe` node by its body, written into the main graph under
the node's name (`<node>/...`, so a parser's message about one of its nodes names the op it came from), and drops
the `jetmoe` opset import and the local functions: no custom node, no `plugin_namespace`, no local function left.
(`onnx.inliner` would name the values itself and lose that.)
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from export.schema import DOMAIN
from jetmoe.errors import ExportError
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, OpSpec

BODIES = ("switch", "gather", "dense")


class _Body:
    """Collects nodes of one graph or function body; each call adds one node (named after its output)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix  # keeps the value names of If branches apart from the enclosing body's
        self.nodes: list[onnx.NodeProto] = []

    def __call__(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        name = self.prefix + name
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def ints(self, name: str, values: list[int]) -> str:
        return self("Constant", [], name, value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))

    def scalar(self, name: str, value: int) -> str:
        return self("Constant", [], name, value=helper.make_tensor(name, TensorProto.INT64, [], [value]))


def default_gather_max_tokens(num_experts: int, top_k: int) -> int:
    """Largest T for the gather body. A gathered matrix is read twice (copy, then matmul), dense reads each of the
    E once, so gather wins while 2*T*K <= E. ONNX Runtime CPU at 8B widths crosses between T=2 and T=3 (E 8, K 2:
    the limit is 2; docs/performance.md); on a GPU unmeasured."""
    return max(1, num_experts // (2 * top_k))


# ---- expert_map: x [T, D], expert_idx [T, K], weight [E, N, D] -> y [T, K, N] -----------------------------------


def _map_gather(b: _Body) -> str:
    w = b("Gather", ["weight", "expert_idx"], "w_sel", axis=0)  # [T, K, N, D]
    x = b("Unsqueeze", ["x", b.ints("x_axes", [1, 3])], "x_col")  # [T, 1, D, 1]
    y = b("MatMul", [w, x], "y_col")  # [T, K, N, 1]
    return b("Squeeze", [y, b.ints("col_axis", [3])], "y_gather")  # [T, K, N]


def _map_dense(b: _Body) -> str:
    xt = b("Transpose", ["x"], "x_t", perm=[1, 0])  # [D, T]
    y_all = b("MatMul", ["weight", xt], "y_all")  # [E, N, T]
    y_tok = b("Transpose", [y_all], "y_tok", perm=[2, 0, 1])  # [T, E, N]
    idx64 = b("Cast", ["expert_idx"], "idx64", to=TensorProto.INT64)  # GatherND takes int64 indices only
    idx = b("Unsqueeze", [idx64, b.ints("idx_axis", [2])], "idx_nd")  # [T, K, 1]
    return b("GatherND", [y_tok, idx], "y_dense", batch_dims=1)  # [T, K, N]: y_tok[t, idx[t, j]]


# ---- expert_reduce: h [T, K, N], expert_idx [T, K], gates [T, K], weight [E, D, N], bias [D] -> y [T, D] --------


def _reduce_gather(b: _Body) -> str:
    w = b("Gather", ["weight", "expert_idx"], "w_sel", axis=0)  # [T, K, D, N]
    h = b("Unsqueeze", ["h", b.ints("h_axis", [3])], "h_col")  # [T, K, N, 1]
    y = b("Squeeze", [b("MatMul", [w, h], "y_col"), b.ints("col_axis", [3])], "y_slots")  # [T, K, D]
    gated = b("Mul", [y, b("Unsqueeze", ["gates", b.ints("g_axis", [2])], "g_col")], "gated")  # [T, K, D]
    return b("ReduceSum", [gated, b.ints("slot_axis", [1])], "y_gather", keepdims=0)  # [T, D]


def _reduce_dense(b: _Body, num_experts: int) -> str:
    experts = b("CastLike", [b("Range", [b.scalar("zero", 0), b.scalar("num_e", num_experts), b.scalar("one", 1)],
                               "experts"), "expert_idx"], "experts_t")  # [E]
    hit = b("Equal", [b("Unsqueeze", ["expert_idx", b.ints("hit_axis", [2])], "idx_3d"), experts], "hit")  # [T, K, E]
    onehot = b("CastLike", [hit, "h"], "onehot")  # [T, K, E]: 1 where slot j of token t chose expert e
    rows = b("MatMul", [b("Transpose", [onehot], "onehot_t", perm=[0, 2, 1]), "h"], "rows")  # [T, E, N], 0 off-route
    rows_e = b("Transpose", [rows], "rows_e", perm=[1, 2, 0])  # [E, N, T]
    y_all = b("MatMul", ["weight", rows_e], "y_all")  # [E, D, T]
    gate_te = b("ReduceSum", [b("Mul", [onehot, b("Unsqueeze", ["gates", b.ints("g_axis", [2])], "g_col")], "g_tke"),
                              b.ints("slot_axis", [1])], "gate_te", keepdims=0)  # [T, E], 0 off-route
    gate_e = b("Unsqueeze", [b("Transpose", [gate_te], "gate_et", perm=[1, 0]), b.ints("mid_axis", [1])],
               "gate_e1t")  # [E, 1, T]
    summed = b("ReduceSum", [b("Mul", [y_all, gate_e], "gated"), b.ints("expert_axis", [0])], "summed",
               keepdims=0)  # [D, T], experts in order
    return b("Transpose", [summed], "y_dense", perm=[1, 0])  # [T, D]


# ---- bodies -------------------------------------------------------------------------------------------------------


def _branch(body, name: str, *args) -> onnx.GraphProto:
    b = _Body(prefix=f"{name}_")
    y = body(b, *args)
    return helper.make_graph(b.nodes, name, [], [helper.make_value_info(y, onnx.TypeProto())])


def _switch(b: _Body, gather: tuple, dense: tuple, gather_max_tokens: int) -> str:
    T = b("Gather", [b("Shape", ["expert_idx"], "idx_shape"), b.scalar("t_axis", 0)], "T", axis=0)  # scalar
    small = b("LessOrEqual", [T, b.scalar("max_t", gather_max_tokens)], "small")
    return b("If", [small], "y_switch", then_branch=_branch(gather[0], "g", *gather[1:]),
             else_branch=_branch(dense[0], "d", *dense[1:]))


def expert_map_function(opset: int, body: str, gather_max_tokens: int) -> onnx.FunctionProto:
    b = _Body()
    if body == "gather":
        y = _map_gather(b)
    elif body == "dense":
        y = _map_dense(b)
    else:
        y = _switch(b, (_map_gather,), (_map_dense,), gather_max_tokens)
    assert list(b.nodes[-1].output) == [y], (b.nodes[-1].output, y)
    b.nodes[-1].output[0] = "y"
    return _function(EXPERT_MAP, b, opset)


def expert_reduce_function(num_experts: int, opset: int, body: str, gather_max_tokens: int) -> onnx.FunctionProto:
    b = _Body()
    if body == "gather":
        y = _reduce_gather(b)
    elif body == "dense":
        y = _reduce_dense(b, num_experts)
    else:
        y = _switch(b, (_reduce_gather,), (_reduce_dense, num_experts), gather_max_tokens)
    b("Add", [y, "bias"], "y")
    return _function(EXPERT_REDUCE, b, opset)


def _function(op: OpSpec, body: _Body, opset: int) -> onnx.FunctionProto:
    return helper.make_function(DOMAIN, op.name, list(op.input_names), list(op.output_names), body.nodes,
                                opset_imports=[helper.make_opsetid("", opset)])


def portable_functions(num_experts: int, top_k: int, opset: int, body: str = "switch",
                       gather_max_tokens: int | None = None) -> list[onnx.FunctionProto]:
    """The two ops' portable bodies as functions (what `inline_portable` writes into the graph)."""
    if body not in BODIES:
        raise ExportError(f"portable body {body!r} is not one of {BODIES}")
    limit = default_gather_max_tokens(num_experts, top_k) if gather_max_tokens is None else gather_max_tokens
    return [expert_map_function(opset, body, limit), expert_reduce_function(num_experts, opset, body, limit)]


def inline_portable(model: onnx.ModelProto, num_experts: int, top_k: int, opset: int, body: str = "switch",
                    gather_max_tokens: int | None = None) -> onnx.ModelProto:
    """`model` with every `jetmoe` node replaced by its portable body, in place in the main graph (returned).

    Works on the proto without its external data: only nodes change; the initializers and their external-data
    references stay as they are."""
    functions = {f.name: f for f in portable_functions(num_experts, top_k, opset, body, gather_max_tokens)}
    nodes = []
    for index, node in enumerate(model.graph.node):
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        if node.op_type not in functions:
            raise ExportError(f"node {node.name!r}: unknown {DOMAIN} op {node.op_type!r}; known: {sorted(functions)}")
        fn = functions[node.op_type]
        names = dict(zip(fn.input, node.input, strict=True)) | dict(zip(fn.output, node.output, strict=True))
        nodes += [_renamed(n, names, f"{node.name or f'{node.op_type}_{index}'}/") for n in fn.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.functions[:]  # the plugin reference bodies: nothing calls them any more
    kept = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def _renamed(node: onnx.NodeProto, names: dict[str, str], prefix: str) -> onnx.NodeProto:
    """A copy of a function-body node with the formal parameters bound and every other name prefixed."""
    out = onnx.NodeProto()
    out.CopyFrom(node)

    def rename(name: str) -> str:
        return names.get(name, prefix + name) if name else name

    out.name = prefix + node.name
    out.input[:] = [rename(n) for n in node.input]
    out.output[:] = [rename(n) for n in node.output]
    for attr in out.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            branch = [_renamed(n, names, prefix) for n in attr.g.node]
            del attr.g.node[:]
            attr.g.node.extend(branch)
            for value in attr.g.output:
                value.name = rename(value.name)
    return out
