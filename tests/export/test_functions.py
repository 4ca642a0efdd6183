"""The `jetmoe` local-function bodies in ONNX Runtime against the torch ops, node by node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export import schema
from export.functions import local_functions
from jetmoe import ops
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, ONNX_OPSET_VERSION, OpSpec
from tests.jetmoe.test_ops import inputs

ort = pytest.importorskip("onnxruntime")
OPSET = 21
RANKS = {"x": ["T", "D"], "expert_idx": ["T", "K"], "weight": ["E", "O", "I"], "h": ["T", "K", "N"],
         "gates": ["T", "K"], "bias": ["D"]}
_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


def single_node_model(op: OpSpec, num_experts: int, dtype: torch.dtype, index_type: int) -> onnx.ModelProto:
    elem = _TYPES[dtype]
    node = helper.make_node(op.name, list(op.input_names), list(op.output_names), domain=schema.DOMAIN,
                            **schema.node_attributes(op))
    graph = helper.make_graph(
        [node], "one_op",
        [helper.make_tensor_value_info(name, index_type if name == "expert_idx" else elem, RANKS[name])
         for name in op.input_names],
        [helper.make_tensor_value_info("y", elem, ["T", "K", "O"] if op is EXPERT_MAP else ["T", "O"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(schema.DOMAIN, ONNX_OPSET_VERSION)],
                              functions=local_functions(num_experts, OPSET))
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


SHAPES = [(1, 8, 12, 4, 2), (7, 13, 5, 8, 2), (16, 32, 24, 8, 1), (33, 17, 9, 5, 3)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("pattern", ["random", "one_expert", "few_experts"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_bodies_match_the_torch_ops(shape, pattern, dtype):
    T, D, N, E, K = shape
    x, idx, w_map, h, gates, w_red, bias = inputs(*shape, dtype, pattern)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    for index_type, idx_t in ((TensorProto.INT64, idx), (TensorProto.INT32, idx.int())):
        y = run(single_node_model(EXPERT_MAP, E, dtype, index_type), dict(x=x, expert_idx=idx_t, weight=w_map))
        torch.testing.assert_close(y, ops.expert_map(x, idx, w_map), atol=tol, rtol=tol)
        z = run(single_node_model(EXPERT_REDUCE, E, dtype, index_type),
                dict(h=h, expert_idx=idx_t, gates=gates, weight=w_red, bias=bias))
        torch.testing.assert_close(z, ops.expert_reduce(h, idx, gates, w_red, bias), atol=tol, rtol=tol)


def test_bodies_never_touch_unselected_experts():
    x, idx, w_map, h, gates, w_red, bias = inputs(5, 8, 6, 8, 2, torch.float32, "few_experts")
    w_map[2:] = float("nan")
    w_red[2:] = float("nan")
    y = run(single_node_model(EXPERT_MAP, 8, torch.float32, TensorProto.INT64),
            dict(x=x, expert_idx=idx, weight=w_map))
    z = run(single_node_model(EXPERT_REDUCE, 8, torch.float32, TensorProto.INT64),
            dict(h=h, expert_idx=idx, gates=gates, weight=w_red, bias=bias))
    assert torch.isfinite(y).all() and torch.isfinite(z).all()


def test_zero_tokens():
    x, idx, w_map, *_ = inputs(1, 8, 6, 4, 2, torch.float32)
    y = run(single_node_model(EXPERT_MAP, 4, torch.float32, TensorProto.INT64),
            dict(x=x[:0], expert_idx=idx[:0], weight=w_map))
    assert tuple(y.shape) == (0, 2, 6)
    assert np.isfinite(y.numpy()).all()
