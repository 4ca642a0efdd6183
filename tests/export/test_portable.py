"""The portable dispatch bodies (gather, dense, switch) in ONNX Runtime against the torch ops, op by op."""

from __future__ import annotations

import functools

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export import portable, schema
from jetmoe import ops
from jetmoe.errors import ExportError
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, OPS, OpSpec
from tests.jetmoe.test_ops import inputs

OPSET = 21
# (T, D, N, E, K): 1 token, odd and prime widths, k = 1, 2, 3; T either side of the switch limit E // 2K
SHAPES = [(1, 8, 12, 4, 2), (3, 8, 12, 8, 2), (7, 13, 5, 8, 2), (16, 32, 24, 8, 1), (33, 17, 9, 5, 3)]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
RANKS = {"x": ["T", "D"], "expert_idx": ["T", "K"], "weight": ["E", "O", "I"], "h": ["T", "K", "N"],
         "gates": ["T", "K"], "bias": ["D"]}
_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


def single_node_model(op: OpSpec, num_experts: int, top_k: int, dtype: torch.dtype, index_type: int,
                      body: str) -> onnx.ModelProto:
    """One `jetmoe` node as the exporter writes it, then inlined as the portable exporter does."""
    elem = _TYPES[dtype]
    node = helper.make_node(op.name, list(op.input_names), list(op.output_names), name=f"node_{op.name}",
                            domain=schema.DOMAIN, **schema.node_attributes(op))
    graph = helper.make_graph(
        [node], "one_op",
        [helper.make_tensor_value_info(name, index_type if name == "expert_idx" else elem, RANKS[name])
         for name in op.input_names],
        [helper.make_tensor_value_info("y", elem, ["T", "K", "O"] if op is EXPERT_MAP else ["T", "O"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(schema.DOMAIN, 1)])
    model = portable.inline_portable(model, num_experts, top_k, OPSET, body)
    onnx.checker.check_model(model, full_check=True)
    return model


@functools.cache
def session(op_name: str, num_experts: int, top_k: int, dtype: torch.dtype, index_type: int, body: str):
    model = single_node_model(OPS[op_name], num_experts, top_k, dtype, index_type, body)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny ops; and no idle thread pool spinning while other sessions run
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(op: OpSpec, shape: tuple, dtype: torch.dtype, index_type: int, body: str, feeds: dict) -> torch.Tensor:
    _, _, _, E, K = shape
    out = session(op.name, E, K, dtype, index_type, body).run(None, {k: v.numpy() for k, v in feeds.items()})
    return torch.from_numpy(out[0])


@pytest.mark.parametrize("body", portable.BODIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_bodies_match_the_torch_ops(body, shape, dtype):
    cases = [("random", TensorProto.INT64), ("random", TensorProto.INT32)]
    if dtype == torch.float32:
        cases += [("one_expert", TensorProto.INT64), ("few_experts", TensorProto.INT64)]
    for pattern, index_type in cases:
        x, idx, w_map, h, gates, w_red, bias = inputs(*shape, dtype, pattern)
        idx_t = idx if index_type == TensorProto.INT64 else idx.int()
        y = run(EXPERT_MAP, shape, dtype, index_type, body, {"x": x, "expert_idx": idx_t, "weight": w_map})
        ref = ops.expert_map(x, idx, w_map)
        print(body, shape, dtype, pattern, index_type, "map max diff", float((y - ref).abs().max()))
        torch.testing.assert_close(y, ref, atol=TOL[dtype], rtol=TOL[dtype])
        z = run(EXPERT_REDUCE, shape, dtype, index_type, body,
                {"h": h, "expert_idx": idx_t, "gates": gates, "weight": w_red, "bias": bias})
        ref = ops.expert_reduce(h, idx, gates, w_red, bias)
        print(body, shape, dtype, pattern, index_type, "reduce max diff", float((z - ref).abs().max()))
        torch.testing.assert_close(z, ref, atol=TOL[dtype], rtol=TOL[dtype])


def test_the_graph_is_plugin_free_and_static():
    model = single_node_model(EXPERT_REDUCE, 8, 2, torch.float32, TensorProto.INT64, "switch")
    every = list(model.graph.node) + [n for node in model.graph.node for a in node.attribute
                                      if a.type == onnx.AttributeProto.GRAPH for n in a.g.node]
    used = {n.op_type for n in every}
    assert not used & {"NonZero", "Loop", "Scan", "Unique", "Compress"}, used
    assert "If" in used  # the size switch
    assert not model.functions and all(o.domain != schema.DOMAIN for o in model.opset_import)
    assert all(n.domain in ("", "ai.onnx") for n in every)
    assert not any(a.name.startswith("plugin_") for n in every for a in n.attribute)
    assert all(n.name.startswith("node_expert_reduce/") for n in every)  # a parser's message names the op


@pytest.mark.parametrize("T", [1, 2, 3, 9])
def test_the_switch_gives_the_same_numbers_either_side_of_its_limit(T):
    assert portable.default_gather_max_tokens(8, 2) == 2  # JetMoe: E 8, K 2
    x, idx, w_map, *_ = inputs(T, 16, 12, 8, 2, torch.float32)
    y = run(EXPERT_MAP, (T, 16, 12, 8, 2), torch.float32, TensorProto.INT64, "switch",
            {"x": x, "expert_idx": idx, "weight": w_map})
    torch.testing.assert_close(y, ops.expert_map(x, idx, w_map), atol=1e-5, rtol=1e-5)


def test_unknown_body_or_op_is_refused():
    with pytest.raises(ExportError, match="portable body 'loop' is not one of"):
        portable.portable_functions(8, 2, OPSET, body="loop")
    node = helper.make_node("expert_gather", ["x"], ["y"], name="ghost", domain=schema.DOMAIN)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ExportError, match="node 'ghost': unknown jetmoe op 'expert_gather'"):
        portable.inline_portable(helper.make_model(graph), 8, 2, OPSET)
