"""The TensorRT-compatibility lint: our export passes; each kind of problem fails and names the node."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import onnx.inliner
import pytest
from onnx import helper, version_converter

from export.lint import NODES_PER_LAYER, check_dispatch, expected_layers, lint_model
from jetmoe.cli import main
from tests.conftest import prefill_feeds


@pytest.fixture
def model(exported) -> onnx.ModelProto:
    return onnx.load(exported(), load_external_data=False)


def first_output(model: onnx.ModelProto, op_type: str) -> str:
    return next(n.output[0] for n in model.graph.node if n.op_type == op_type)


def test_our_export_passes(model):
    report = lint_model(model)
    assert report, str(report)
    assert "passed" in str(report)


def test_unsupported_op_is_named(model):
    source = first_output(model, "Softmax")
    model.graph.node.append(helper.make_node("Unique", [source], ["unique_out"], name="inserted_unique"))
    model.graph.node.append(helper.make_node("NonZero", [source], ["nz_out"], name="inserted_nonzero"))
    model.graph.node.append(helper.make_node("Det", [source], ["det_out"], name="inserted_det"))
    report = lint_model(model)
    text = str(report)
    assert not report and len(report.issues) == 3
    assert "node 'inserted_unique' (Unique): data-dependent output shape on the main path" in text
    assert "node 'inserted_nonzero' (NonZero): data-dependent output shape" in text
    assert "node 'inserted_det' (Det)" in text


def test_unsupported_type_is_named(model):
    model.graph.node.append(helper.make_node("Cast", ["input_ids"], ["as_double"], name="to_double",
                                             to=onnx.TensorProto.DOUBLE))
    model.graph.node.append(helper.make_node("Softmax", ["as_double"], ["soft_double"], name="double_softmax"))
    report = lint_model(model)
    assert "node 'double_softmax' (Softmax): type DOUBLE" in str(report)


def test_bad_plugin_nodes_are_named(model):
    node = next(n for n in model.graph.node if n.op_type == "expert_map")
    node.name = "moa_map"
    node.attribute.append(helper.make_attribute("activation", "silu"))
    for attr in node.attribute:
        if attr.name == "plugin_version":
            attr.s = b"2"
    model.graph.node.append(helper.make_node("expert_gather", ["input_ids"], ["g"], name="ghost", domain="jetmoe"))
    model.graph.node.append(helper.make_node("MoE", ["input_ids"], ["m"], name="ort_moe", domain="com.microsoft"))
    text = str(lint_model(model))
    assert "node 'moa_map' (jetmoe::expert_map): attribute plugin_version='2', expected '1'" in text
    assert "node 'moa_map' (jetmoe::expert_map): attribute activation has type STRING" in text
    assert "node 'ghost' (jetmoe::expert_gather): unknown jetmoe op" in text
    assert "node 'ort_moe' (com.microsoft::MoE): domain 'com.microsoft'" in text


def test_missing_function_and_opset(model):
    del model.functions[:]
    model.opset_import[0].version = 25
    text = str(lint_model(model))
    assert "no local function for jetmoe::expert_map, jetmoe::expert_reduce" in text and "opset 25 is outside" in text
    assert text.count("no local function") == 1  # one line for the model, not one per node


def test_cli(model, tmp_path, capsys, exported):
    assert main(["lint", str(exported())]) == 0
    assert "TensorRT lint passed" in capsys.readouterr().out
    model.graph.node.append(helper.make_node("Unique", [first_output(model, "Softmax")], ["u"], name="bad"))
    onnx.save(model, tmp_path / "bad.onnx")
    assert main(["lint", str(tmp_path / "bad.onnx")]) == 1
    captured = capsys.readouterr()
    assert "node 'bad' (Unique)" in captured.out and "1 problem(s)" in captured.err
    assert main(["lint", str(tmp_path / "missing.onnx")]) == 1


# ---- the portable dispatch's If, and the dispatch check -------------------------------------------------------------


def if_node(name: str, then_out: list, else_out: list, inner_op: str = "Identity") -> list[onnx.NodeProto]:
    """input_ids -> If(T <= 2) whose branches output tensors of the given shapes (then: Identity or `inner_op`)."""
    def branch(label, shape, op):
        out = helper.make_tensor_value_info(f"{name}_{label}_y", onnx.TensorProto.INT64, None)
        if shape == "same":
            body = [helper.make_node(op, ["input_ids"], [out.name], name=f"{name}_{label}_op")]
        else:  # a reshape to a fixed, different shape
            dims = helper.make_tensor(f"{name}_{label}_dims", onnx.TensorProto.INT64, [len(shape)], shape)
            body = [helper.make_node("Constant", [], [f"{name}_{label}_shape"], value=dims),
                    helper.make_node("Reshape", ["input_ids", f"{name}_{label}_shape"], [out.name],
                                     name=f"{name}_{label}_op")]
        return helper.make_graph(body, f"{name}_{label}", [], [out])

    t = helper.make_tensor(f"{name}_limit", onnx.TensorProto.INT64, [], [2])
    return [helper.make_node("Size", ["input_ids"], [f"{name}_T"]),
            helper.make_node("Constant", [], [f"{name}_max"], value=t),
            helper.make_node("LessOrEqual", [f"{name}_T", f"{name}_max"], [f"{name}_small"]),
            helper.make_node("If", [f"{name}_small"], [f"{name}_out"], name=name,
                             then_branch=branch("then", then_out, inner_op), else_branch=branch("else", else_out,
                                                                                              "Identity"))]


def test_an_if_with_one_shape_either_way_passes_and_its_branches_are_linted(model):
    model.graph.node.extend(if_node("same_if", "same", "same"))
    assert lint_model(model), str(lint_model(model))
    model.graph.node.extend(if_node("ragged_if", [1, -1], [-1]))
    model.graph.node.extend(if_node("nonzero_if", "same", "same", inner_op="NonZero"))
    text = str(lint_model(model))
    assert "node 'ragged_if' (If): output 'ragged_if_out' has no shape common to both branches" in text
    assert "node 'nonzero_if_then_op' (NonZero): data-dependent output shape" in text
    assert "same_if" not in text


def test_the_portable_export_passes_the_table(exported):
    path = exported("fp32", dispatch="portable")
    report = lint_model(onnx.load(path, load_external_data=False), "portable", 2)
    assert report, str(report)
    assert "ONNX operator table" in report.check


def test_inlined_or_dropped_functions_name_the_likely_cause(model):
    inlined = onnx.inliner.inline_local_functions(model)
    for dispatch, layers in ((None, None), ("plugin", 2)):
        text = str(lint_model(inlined, dispatch, layers))
        assert "a tool inlined the jetmoe local functions" in text and "(inline=True is its default" in text
        assert ("0 of the 8 jetmoe nodes expected for the 2 layers the graph names" in text) == (dispatch is None)
        assert ("records the plugin dispatch and 2 layers, so 8 jetmoe nodes are expected; the graph has 0"
                in text) == (dispatch == "plugin")
    converted = version_converter.convert_version(model, 22)
    assert "onnx.version_converter drops function bodies" in str(lint_model(converted))
    text = str(lint_model(model, "portable", 2))
    assert "export.json records the portable dispatch, but the graph has 8 jetmoe nodes" in text
    assert lint_model(model, "plugin", 2)


# ---- the tools that strip the plugin nodes, run for real (docs/ops.md) ---------------------------------------------
# The stripped models still run in ONNX Runtime: nothing else fails until TensorRT finds no jetmoe node.


def run_in_onnx_runtime(model: onnx.ModelProto, config, tmp_path) -> None:
    import onnxruntime as ort

    path = tmp_path / "stripped.onnx"
    onnx.save(model, path)
    feeds = prefill_feeds(config, [3, 4, 5])
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)


def onnxscript_optimizer(model, tmp_path):
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)  # inline=True by default


def onnx_inliner(model, tmp_path):
    return onnx.inliner.inline_local_functions(model)


def ort_saved_optimized_model(model, tmp_path):
    import onnxruntime as ort

    source, target = tmp_path / "in.onnx", tmp_path / "optimized.onnx"
    onnx.save(model, source)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return onnx.load(target)


@pytest.fixture
def with_weights(exported) -> onnx.ModelProto:
    return onnx.load(exported())  # the tools below fold and rewrite: give them the weights


def test_the_export_has_the_nodes_its_layers_need(model, tiny_checkpoint):
    layers = tiny_checkpoint[1].config.num_hidden_layers
    assert expected_layers(model) == layers
    assert sum(n.domain == "jetmoe" for n in model.graph.node) == NODES_PER_LAYER * layers
    assert check_dispatch(model) == []


@pytest.mark.parametrize("tool", [onnxscript_optimizer, onnx_inliner, ort_saved_optimized_model])
def test_inlining_tools_are_named(with_weights, tiny_checkpoint, tmp_path, tool):
    stripped = tool(with_weights, tmp_path)
    assert not any(n.domain == "jetmoe" for n in stripped.graph.node)
    run_in_onnx_runtime(stripped, tiny_checkpoint[1].config, tmp_path)  # still runs: only the lint can tell
    issues = check_dispatch(stripped)
    assert len(issues) == 1, issues
    text = str(issues[0])
    assert "0 of the 8 jetmoe nodes expected for the 2 layers the graph names are left" in text
    assert "inline=False" in text and "onnx.inliner" in text and "optimized_model_filepath" in text


def test_onnxscript_without_inlining_keeps_the_nodes(with_weights):
    import onnxscript.optimizer

    assert check_dispatch(onnxscript.optimizer.optimize(with_weights, inline=False)) == []


def test_version_converter_is_named(model):
    converted = version_converter.convert_version(model, 20)
    assert not converted.functions  # the converter's loss; the nodes stay
    issues = check_dispatch(converted)
    assert len(issues) == 1, issues
    text = str(issues[0])
    assert "no local function for jetmoe::expert_map, jetmoe::expert_reduce" in text
    assert "version_converter" in text and "--opset" in text


def test_a_partly_inlined_model_is_caught(model):
    partial = onnx.inliner.inline_selected_functions(model, [("jetmoe", "expert_map")])
    issues = check_dispatch(partial)
    assert len(issues) == 1 and "4 of the 8 jetmoe nodes expected for the 2 layers" in str(issues[0]), issues


def test_a_graph_without_layers_is_not_judged():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    assert check_dispatch(helper.make_model(graph)) == []


def test_polygraphy_check_lint_runs(exported, tiny_checkpoint, tmp_path):
    """`polygraphy check lint` needs onnx-graphsurgeon (a dependency). It runs the model in ONNX Runtime, so our
    nodes pass through their local functions (it cannot tell whether the plugin nodes are still there). Its
    default data makes every dynamic dimension 1, and a mask [1, 1] for 1 cached + 1 new token is refused by the
    graph: give consistent shapes (docs/ecosystem.md)."""
    pytest.importorskip("onnx_graphsurgeon", reason="polygraphy check lint needs onnx-graphsurgeon")
    config = tiny_checkpoint[1].config
    past = f"[1,{config.num_key_value_heads},2,{config.kv_channels}]"
    shapes = ["input_ids:[1,3]", "attention_mask:[1,5]", "position_ids:[1,3]"] + [
        f"past_key_values.{i}.{kv}:{past}" for i in range(config.num_hidden_layers) for kv in ("key", "value")]
    report = tmp_path / "lint.json"
    result = subprocess.run([sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())",
                             "check", "lint", str(exported()), "-o", str(report), "--input-shapes", *shapes],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads(report.read_text())["summary"]
    assert not summary["failing"] and any(name.startswith("node_expert_map") for name in summary["passing"]), summary
