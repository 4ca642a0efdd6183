"""The TensorRT-compatibility lint: our export passes; each kind of problem fails and names the node."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from export.lint import lint_model
from jetmoe.cli import main


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
    assert "no local function with this name" in text and "opset 25 is outside" in text


def test_cli(model, tmp_path, capsys, exported):
    assert main(["lint", str(exported())]) == 0
    assert "TensorRT lint passed" in capsys.readouterr().out
    model.graph.node.append(helper.make_node("Unique", [first_output(model, "Softmax")], ["u"], name="bad"))
    onnx.save(model, tmp_path / "bad.onnx")
    assert main(["lint", str(tmp_path / "bad.onnx")]) == 1
    captured = capsys.readouterr()
    assert "node 'bad' (Unique)" in captured.out and "1 problem(s)" in captured.err
    assert main(["lint", str(tmp_path / "missing.onnx")]) == 1
