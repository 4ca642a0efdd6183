"""The plugins agree with the ONNX nodes `export/` writes: names, inputs, attributes (none), namespace, version.

No TensorRT needed: the plugin functions are built by `engines.plugins.define` against a stand-in for
`tensorrt.plugin` whose shape expressions are strings, so their parameters, output shapes and AOT launch
parameters can be read here.
"""

from __future__ import annotations

import inspect
import types
from typing import NamedTuple

import onnx
import pytest

from engines import plugin_kernels
from engines.plugins import (
    INDEX_TYPES,
    PLUGINS,
    advertised_tactics,
    building,
    check_signatures,
    define,
    plugin_versions,
)
from export import schema
from export.exporter import export_checkpoint
from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.op_contract import NAMESPACE, OPS, VERSION
from jetmoe.random_weights import write_random_checkpoint

ONNX_ATTR_TYPES = {int: onnx.AttributeProto.INT, float: onnx.AttributeProto.FLOAT}  # what a plugin field may be


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin-contract")
    checkpoint = write_random_checkpoint(folder / "ckpt", JetMoeConfig.from_preset("tiny"))
    return onnx.load(export_checkpoint(checkpoint, folder / "onnx"), load_external_data=False)


def test_one_plugin_per_op_with_the_schema_names_and_inputs():
    assert list(PLUGINS) == list(OPS)
    for name, spec in PLUGINS.items():
        op = OPS[name]
        assert (spec.name, spec.inputs, spec.outputs) == (op.name, op.input_names, op.output_names)
        assert spec.plugin_id == op.qualified_name
        assert spec.namespace == NAMESPACE == schema.DOMAIN
        assert spec.version == VERSION == "1"  # QDPs are always version 1
        assert "." not in spec.namespace and spec.namespace not in ("", "trt", "tensorrt", "std")
    assert plugin_versions() == {"jetmoe::expert_map": "1", "jetmoe::expert_reduce": "1"}


def test_declared_attributes_match_the_schema():
    """Node attributes minus the parser's routing attributes are the plugin fields, in order, with types."""
    for name, spec in PLUGINS.items():
        node_attributes = schema.node_attributes(OPS[name])
        assert tuple(node_attributes)[:2] == tuple(schema.PARSER_ATTRIBUTES)
        fields = [k for k in node_attributes if k not in schema.PARSER_ATTRIBUTES]
        assert fields == list(spec.attribute_names) == []
        for _, kind, default in spec.attributes:  # none today; a future one must be INT/FLOAT with a default
            assert kind in ONNX_ATTR_TYPES and isinstance(default, kind)


def test_exported_nodes_match_the_plugins(exported_tiny):
    nodes = [n for n in exported_tiny.graph.node if n.domain == schema.DOMAIN]
    assert sorted({n.op_type for n in nodes}) == sorted(PLUGINS)
    assert len(nodes) == 4 * 2  # map + reduce, MoA and MoE, 2 blocks
    for node in nodes:
        spec = PLUGINS[node.op_type]
        attrs = {a.name: a for a in node.attribute}
        assert attrs["plugin_namespace"].type == onnx.AttributeProto.STRING
        assert attrs["plugin_namespace"].s.decode() == spec.namespace
        assert attrs["plugin_version"].s.decode() == spec.version
        fields = [a.name for a in node.attribute if a.name not in schema.PARSER_ATTRIBUTES]
        assert fields == list(spec.attribute_names)
        assert len(node.input) == len(spec.inputs) and len(node.output) == len(spec.outputs)
        assert "aot" not in attrs  # the builder picks AOT/JIT with a network flag


def test_exported_expert_idx_type_is_one_the_plugins_take(exported_tiny):
    """TopK in ONNX gives int64 indices; the autotune combinations must offer it (and int32)."""
    inferred = onnx.shape_inference.infer_shapes(exported_tiny)
    types_ = {v.name: v.type.tensor_type.elem_type for v in
              list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    idx_names = {n.input[1] for n in exported_tiny.graph.node if n.domain == schema.DOMAIN}
    found = {onnx.TensorProto.DataType.Name(types_[n]) for n in idx_names if n in types_}
    assert found == {"INT64"}  # what the exporter writes today
    assert found <= set(INDEX_TYPES)


# ---- the plugin functions against a stand-in tensorrt.plugin ------------------------------------------------


class Expr(str):
    """A symbolic int: arithmetic builds the expression text."""

    def __mul__(self, other):
        return Expr(f"{self}*{other}")

    def __add__(self, other):
        return Expr(f"{self}+{other}")


class FakeDesc:
    def __init__(self, dims: str, dtype: str = "BF16"):
        self.shape_expr = tuple(Expr(d) for d in dims.split(","))
        self.dtype = types.SimpleNamespace(name=dtype)


class FakeLaunch:
    grid_x = grid_y = grid_z = block_x = block_y = block_z = shared_mem = 1


class Combination(NamedTuple):
    io_types: str
    layouts: str
    tactics: list


fake_trtp = types.SimpleNamespace(
    TensorDesc=FakeDesc, Tensor=object, KernelLaunchParams=FakeLaunch, AutoTuneCombination=Combination,
    SymIntExprs=types.SimpleNamespace(from_tuple=list), SymInt32=lambda e: ("i32", e),
    from_shape_expr=lambda shape, dtype: (tuple(shape), dtype.name),
    max=lambda a, b: Expr(f"max({a},{b})"), cdiv=lambda a, b: Expr(f"cdiv({a},{b})"),
)


class FakeKernel(NamedTuple):
    name: str
    ptx: str
    num_warps: int
    shared_memory: int


def fake_compile(op, desc, index_desc, tactic):
    assert tactic in plugin_kernels.TACTICS  # TensorRT's default tactic 0 is mapped before compiling
    return FakeKernel(f"{op}_{desc.dtype.name}_{index_desc.dtype.name}", ".entry", 4, 256)


@pytest.fixture(scope="module")
def functions():
    return define(fake_trtp, compile_kernel=fake_compile)


def test_functions_take_exactly_inputs_attributes_and_qdp_arguments(functions):
    for name, spec in PLUGINS.items():
        check_signatures(spec, functions[name])  # raises on a mismatch
        assert tuple(inspect.signature(functions[name]["aot_impl"]).parameters) == spec.inputs + ("outputs", "tactic")
        assert inspect.signature(functions[name]["aot_impl"]).return_annotation is not inspect.Parameter.empty
        # impl has one way to run: no tactic parameter, so QDP calls it without one (expects_tactic False)
        assert tuple(inspect.signature(functions[name]["impl"]).parameters) == spec.inputs + ("outputs", "stream")


def test_output_descriptors_are_static_shape_expressions(functions):
    x, idx, w_map = FakeDesc("T,D"), FakeDesc("T,K", "INT64"), FakeDesc("E,N,D")
    assert functions["expert_map"]["register"](x, idx, w_map) == ((("T", "K", "N"), "BF16"),)
    h, gates = FakeDesc("T,K,N", "FP16"), FakeDesc("T,K", "FP16")
    w_red, bias = FakeDesc("E,D,N", "FP16"), FakeDesc("D", "FP16")
    assert functions["expert_reduce"]["register"](h, idx, gates, w_red, bias) == ((("T", "D"), "FP16"),)


def test_autotune_offers_float_types_and_both_index_types(functions):
    x = FakeDesc("T,D")
    combos = functions["expert_map"]["autotune"](x, x, x, ())
    assert [c.io_types for c in combos] == ["FP32|FP16|BF16, INT32, FP32|FP16|BF16, FP32|FP16|BF16",
                                            "FP32|FP16|BF16, INT64, FP32|FP16|BF16, FP32|FP16|BF16"]
    assert all(c.layouts == "LINEAR" and c.tactics == sorted(plugin_kernels.TACTICS) for c in combos)
    combos = functions["expert_reduce"]["autotune"](x, x, x, x, x, ())
    assert combos[1].io_types.split(", ")[1] == "INT64" and len(combos[1].io_types.split(", ")) == 6


def test_autotune_advertises_tactics_for_aot_builds_only(functions):
    """QDP's autotune cannot see the mode; the builder states it around the build (`building`)."""
    x = FakeDesc("T,D")
    with building("jit"):
        assert advertised_tactics() == []
        combos = functions["expert_map"]["autotune"](x, x, x, ())
        assert [c.tactics for c in combos] == [None, None]  # QDP: the default tactic 0 only, nothing timed
        with pytest.raises(InputError, match="already running"), building("aot"):
            pass
    with building("aot"):
        assert [c.tactics for c in functions["expert_reduce"]["autotune"](x, x, x, x, x, ())] == \
            [sorted(plugin_kernels.TACTICS)] * 2
    assert advertised_tactics() == sorted(plugin_kernels.TACTICS)  # outside a build: the AOT list
    with pytest.raises(InputError, match="'fast'"), building("fast"):
        pass


def test_aot_launch_parameters_are_symbolic(functions):
    idx = FakeDesc("T,K", "INT32")
    name, _, launch, args = functions["expert_map"]["aot_impl"](FakeDesc("T,D"), idx, FakeDesc("E,N,D"), (), 2)
    assert name == "expert_map_BF16_INT32"
    assert (launch.grid_x, launch.grid_y, launch.block_x, launch.shared_mem) == ("max(T*K,1)", "cdiv(N,128)", 128, 256)
    assert args == [("i32", "T*K"), ("i32", "K"), ("i32", "N"), ("i32", "D"), ("i32", "E")]  # R, K, N, D, E
    name, _, launch, args = functions["expert_reduce"]["aot_impl"](
        FakeDesc("T,K,N"), idx, FakeDesc("T,K"), FakeDesc("E,D,N"), FakeDesc("D"), (), 1)
    assert (launch.grid_x, launch.grid_y) == ("max(T,1)", "cdiv(D,64)")
    assert args == [("i32", "T"), ("i32", "K"), ("i32", "N"), ("i32", "D"), ("i32", "E")]
    # TensorRT's default tactic 0 runs the default tiles
    _, _, launch, _ = functions["expert_reduce"]["aot_impl"](
        FakeDesc("T,K,N"), idx, FakeDesc("T,K"), FakeDesc("E,D,N"), FakeDesc("D"), (), 0)
    assert launch.grid_y == f"cdiv(D,{plugin_kernels.TACTICS[plugin_kernels.DEFAULT_TACTIC].block_n})"


def test_launch_is_one_statement_for_expressions_and_ints():
    """aot_impl (shape expressions), the torch launchers and scripts/gpu_check.py (ints) share `launch`."""
    shapes = [(5, 24), (5, 2), (8, 37, 24)]  # x [T, D], expert_idx [T, K], w [E, N, D]
    assert plugin_kernels.launch("expert_map", shapes, 2) == ((10, 1), (10, 2, 37, 24, 8))
    assert plugin_kernels.launch("expert_map", [(0, 24), (0, 2), (8, 37, 24)], 3) == ((1, 2), (0, 2, 37, 24, 8))
    shapes = [(5, 2, 37), (5, 2), (5, 2), (8, 24, 37), (24,)]  # h, expert_idx, gates, w [E, D, N], bias
    assert plugin_kernels.launch("expert_reduce", shapes, 1) == ((5, 1), (5, 2, 37, 24, 8))
    assert plugin_kernels.launch_formula("expert_map", 1) == {
        "grid": ["max(T*K, 1)", "cdiv(N, 64)", 1], "extra_args": ["T*K", "K", "N", "D", "E"]}


def test_kernel_argument_order_is_qdp_launch_order():
    """QDP launches with: input pointers, the extra int32 args, output pointers (then constexprs, not passed)."""
    import ast
    from pathlib import Path

    import engines

    tree = ast.parse((Path(engines.__file__).parent / "_plugin_jit.py").read_text())
    params = {f.name: [a.arg for a in f.args.args] for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert params["_expert_map_rows_kernel"] == ["x_ptr", "expert_idx_ptr", "w_ptr", "R", "K", "N", "D", "E",
                                                 "y_ptr", "BLOCK_N", "BLOCK_K"]
    assert params["_expert_reduce_rows_kernel"] == ["h_ptr", "expert_idx_ptr", "gates_ptr", "w_ptr", "bias_ptr",
                                                    "T", "K", "N", "D", "E", "y_ptr", "BLOCK_D", "BLOCK_K"]
    for name, op in (("_expert_map_rows_kernel", "expert_map"), ("_expert_reduce_rows_kernel", "expert_reduce")):
        assert len(params[name]) - 2 == plugin_kernels.DECLARED_ARGS[op]  # all but the two constexprs
    spec = PLUGINS["expert_reduce"]
    assert [p.removesuffix("_ptr").replace("w", "weight") for p in params["_expert_reduce_rows_kernel"][:5]] == \
        list(spec.inputs)
