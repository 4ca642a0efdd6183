"""`jetmoe lint`: the transcribed TensorRT operator table (export/lint.py) and, where a TensorRT flavour is
importable, its real ONNX parser, node by node."""

from __future__ import annotations

from pathlib import Path

from export.lint import LintReport, lint_model, load_graph


def lint_file(model: Path) -> LintReport:
    return lint_model(load_graph(model))
