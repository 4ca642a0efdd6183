"""TensorRT-RTX's real ONNX parser on every export flavour, node by node (engines/parse.py), with no GPU.

Plugin exports: every node other than the 4 x num_hidden_layers `jetmoe` nodes is accepted by the parser, and each
`jetmoe` node is matched to our plugin by name, version and namespace (the parser asks the creator registered
under them for that node). Portable exports: every node accepted, none a plugin.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from engines.parse import parse_report
from export import schema


def check_plugin_export(report, num_layers: int) -> None:
    print(report)
    plugin = report.plugin_nodes
    assert len(plugin) == 4 * num_layers
    others = [v for v in report.nodes if not v.is_plugin]
    assert others and all(v.accepted for v in others), [str(v) for v in others if not v.accepted][:5]
    for v in plugin:
        assert v.accepted, str(v)
        assert f"Searching for plugin: {v.op}, plugin_version: 1, plugin_namespace: jetmoe" in v.message, v.message
        assert f"our creator was called for {v.name}" in v.message
    assert report and report.flavour == "tensorrt-rtx" and report.layers > 0


# every dtype; validation outputs on and off (fp32); both tasks: the exports other tests share
@pytest.mark.parametrize(("dtype", "validation_outputs"), [("fp32", False), ("fp16", False), ("bf16", False),
                                                            ("fp32", True)])
def test_the_parser_takes_every_node_of_the_plugin_exports(rtx, exported, dtype, validation_outputs):
    path = exported(dtype, validation_outputs)
    config = json.loads(path.with_name("export.json").read_text())["config"]
    check_plugin_export(parse_report(path, "tensorrt-rtx"), config["num_hidden_layers"])


def test_the_parser_takes_the_sequence_classification_export(rtx, classification_export):
    path, model = classification_export
    check_plugin_export(parse_report(path, "tensorrt-rtx"), model.config.num_hidden_layers)


def test_the_parser_takes_the_portable_export(rtx, exported):
    report = parse_report(exported("fp32", dispatch="portable"), "tensorrt-rtx")
    print(report)
    assert report and not report.plugin_nodes and report.layers > 0
    assert all(v.accepted for v in report.nodes)


def copy_with(src: Path, folder: Path, model: onnx.ModelProto) -> Path:
    """`model` as model.onnx in `folder`, beside links to the source export's weights and export.json."""
    for name in ("model.onnx.data", "export.json"):
        (folder / name).symlink_to(src / name)
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


def test_the_parser_names_the_node_it_refuses_and_what_it_did_not_reach(rtx, exported, tmp_path):
    """RTX implements NonZero as a plugin it does not ship: put one first; everything after is not reached."""
    src = exported().parent
    model = onnx.load(src / "model.onnx", load_external_data=False)
    model.graph.node.insert(0, onnx.helper.make_node("NonZero", ["input_ids"], ["nz"], name="bad_nonzero"))
    model.graph.output.append(onnx.helper.make_value_info("nz", onnx.TypeProto()))
    report = parse_report(copy_with(src, tmp_path, model), "tensorrt-rtx")
    print(report)
    assert not report
    first = report.nodes[0]
    assert (first.name, first.op, first.accepted) == ("bad_nonzero", "NonZero", False)
    assert "NonZero plugin creator version 1 was not found" in first.message
    assert report.nodes[1].accepted is None and "not reached" in report.nodes[1].message
    assert all(v.accepted for v in report.plugin_nodes)  # pass 2 judges each jetmoe node on its own


def tampered(src: Path, folder: Path, attribute: str, value: bytes) -> tuple[Path, str]:
    model = onnx.load(src / "model.onnx", load_external_data=False)
    node = next(n for n in model.graph.node if n.domain == schema.DOMAIN)
    next(a for a in node.attribute if a.name == attribute).s = value
    return copy_with(src, folder, model), node.name


def test_a_plugin_node_of_another_version_is_not_matched(rtx, exported, tmp_path):
    path, name = tampered(exported().parent, tmp_path, "plugin_version", b"2")
    report = parse_report(path, "tensorrt-rtx")
    bad = [v for v in report.plugin_nodes if not v.accepted]
    assert [v.name for v in bad] == [name], [str(v) for v in report.plugin_nodes]
    assert "Plugin not found, are the plugin name, version, and namespace correct?" in bad[0].message


def test_the_parser_falls_back_to_the_node_domain_as_namespace(rtx, exported, tmp_path):
    """A wrong plugin_namespace still finds our plugin: the parser retries with the node's domain, "jetmoe"."""
    path, name = tampered(exported().parent, tmp_path, "plugin_namespace", b"other")
    verdict = next(v for v in parse_report(path, "tensorrt-rtx").plugin_nodes if v.name == name)
    assert verdict.accepted and "Searching for plugin with node domain namespace" in verdict.message


def test_the_probes_are_deregistered(rtx, exported):
    parse_report(exported(), "tensorrt-rtx")
    registry = rtx.get_plugin_registry()
    assert registry.get_creator("expert_map", "1", "jetmoe") is None
