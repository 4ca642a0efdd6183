"""`jetmoe lint` (engines/lint.py): the real parser where one is importable (here TensorRT-RTX), the transcribed
table otherwise, the check that ran named in the output; a plugin export whose functions a tool inlined or dropped
fails with the likely cause."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.inliner
import pytest
from onnx import version_converter

from engines import flavour, lint
from jetmoe.cli import main
from jetmoe.errors import Unavailable


def copy_with(src: Path, folder: Path, model: onnx.ModelProto, manifest: bool = True) -> Path:
    folder.mkdir()
    (folder / "model.onnx.data").symlink_to(src / "model.onnx.data")
    if manifest:
        (folder / "export.json").symlink_to(src / "export.json")
    onnx.save(model, folder / "model.onnx")
    return folder / "model.onnx"


def nodes(path: Path) -> int:
    return len(onnx.load(path, load_external_data=False).graph.node)


def test_lint_names_the_parser_and_each_plugin_match(rtx, exported, capsys):
    portable = exported("fp32", dispatch="portable")
    capsys.readouterr()
    assert main(["lint", str(exported().parent)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"TensorRT lint passed: {nodes(exported())} nodes checked by the tensorrt-rtx "
                          f"{rtx.__version__} ONNX parser")
    matches = [line for line in out.splitlines() if "matched to our plugin" in line]
    assert len(matches) == 8 and all("plugin_version: 1, plugin_namespace: jetmoe" in m for m in matches)
    assert main(["lint", str(portable)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"TensorRT lint passed: {nodes(portable)} nodes") and "matched" not in out


def test_without_tensorrt_the_table_runs_and_says_so(exported, monkeypatch):
    def missing(name):
        raise Unavailable(f"{name} is not installed (test)")

    monkeypatch.setattr(flavour, "import_tensorrt", missing)
    report = lint.lint_file(exported())
    assert report and "operator table" in report.check
    assert all(f"{name} is not installed" in report.check for name in flavour.FLAVOURS)  # each reason named
    assert lint.lint_file(exported("fp32", dispatch="portable"))


def test_a_refused_node_is_an_issue_with_the_parser_message(rtx, exported, tmp_path, capsys):
    src = exported().parent
    model = onnx.load(src / "model.onnx", load_external_data=False)
    model.graph.node.insert(0, onnx.helper.make_node("NonZero", ["input_ids"], ["nz"], name="bad_nonzero"))
    model.graph.output.append(onnx.helper.make_value_info("nz", onnx.TypeProto()))
    assert main(["lint", str(copy_with(src, tmp_path / "bad", model))]) == 1
    captured = capsys.readouterr()
    assert "node 'bad_nonzero' (NonZero): refused by the parser: NonZero: " in captured.out
    after = len(model.graph.node) - 1 - 8  # the nodes after it, less the 8 jetmoe nodes judged on their own
    assert f"{after} nodes after the first refused one were not reached" in captured.out
    assert "1 problem(s)" in captured.err and "tensorrt-rtx" in captured.err


@pytest.mark.parametrize("manifest", [True, False])
def test_inlined_functions_are_named_as_the_cause(rtx, exported, tmp_path, manifest):
    src = exported().parent
    model = onnx.inliner.inline_local_functions(onnx.load(src / "model.onnx", load_external_data=False))
    report = lint.lint_file(copy_with(src, tmp_path / "inlined", model, manifest))
    print(report)
    assert not report
    text = str(report)
    assert "a tool inlined the jetmoe local functions" in text and "onnx.inliner" in text
    assert ("so 8 jetmoe nodes are expected; the graph has 0" in text) == manifest
    assert "(NonZero): refused by the parser" in text  # and the parser's own verdict on what it found instead


def test_dropped_functions_are_named_as_the_cause(rtx, exported, tmp_path):
    src = exported().parent
    model = version_converter.convert_version(onnx.load(src / "model.onnx", load_external_data=False), 22)
    report = lint.lint_file(copy_with(src, tmp_path / "converted", model))
    assert not report and "onnx.version_converter drops function bodies" in str(report)


def test_a_flavour_that_cannot_parse_here_passes_to_the_next(rtx, exported, monkeypatch):
    """Full TensorRT needs a GPU even to create a builder: lint then uses TensorRT-RTX, or the table."""
    real = lint.parse_report

    def parse_report(model, name):
        if name == "tensorrt":
            raise Unavailable("tensorrt 11.4 cannot create a builder here; full TensorRT needs a CUDA GPU")
        return real(model, name)

    monkeypatch.setattr(lint, "parse_report", parse_report)
    report = lint.lint_file(exported())
    assert report and report.check.startswith("tensorrt-rtx")

    def only_tensorrt(model, name):
        if name == "tensorrt-rtx":
            raise Unavailable("tensorrt-rtx is not installed (test)")
        return parse_report(model, name)

    monkeypatch.setattr(lint, "parse_report", only_tensorrt)
    report = lint.lint_file(exported())
    assert report and "operator table" in report.check and "needs a CUDA GPU" in report.check
