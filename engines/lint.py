"""`jetmoe lint` (and every `jetmoe export`): TensorRT's own ONNX parser node by node where a TensorRT flavour is
importable and can parse here (full TensorRT first, which needs a GPU even to parse, then TensorRT-RTX:
engines/parse.py), else the transcribed operator table (export/lint.py). Either way the `jetmoe` nodes and local
functions are checked against the dispatch export.json records, when it is beside the model. The report says which
check ran, and why the table when it is the table.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from engines import flavour as flavours
from engines.parse import ParseReport, parse_report
from export.lint import (
    DISPATCH_KEY,
    ONNX_RUNTIME_ONLY,
    ORT_GRAPH,
    TABLE_CHECK,
    LintIssue,
    LintReport,
    check_dispatch,
    lint_model,
    load_graph,
)
from export.manifest import MANIFEST_NAME, MODEL_NAME, read_manifest
from export.ort_graph import ORT_MODEL_NAME
from jetmoe.errors import Unavailable


def lint_file(model: Path) -> LintReport:
    model = Path(model)
    graph = load_graph(model)
    dispatch, layers = _recorded(model, graph)
    if dispatch in ONNX_RUNTIME_ONLY:  # not a TensorRT graph: say so, without parsing every weight
        report = lint_model(graph, dispatch, layers)
        report.check = f"{TABLE_CHECK}: the model is for ONNX Runtime only ({dispatch})"
        return report
    missing = _missing_weights(graph, model.parent)
    why = [f"the parser needs the weights, and {missing} is not beside {model.name}"] if missing else []
    for flavour in [] if missing else flavours.FLAVOURS:  # full TensorRT first
        try:
            parsed = parse_report(model, flavour)
        except Unavailable as e:  # not installed, or full TensorRT on a machine without a GPU: try the next
            why.append(str(e))
            continue
        return as_lint_report(parsed, check_dispatch(graph, dispatch, layers))
    report = lint_model(graph, dispatch, layers)
    report.check = f"{TABLE_CHECK}: {'; '.join(why)}"
    return report


def as_lint_report(parsed: ParseReport, issues: list[LintIssue]) -> LintReport:
    """The parser's verdicts as a lint report: each refused node an issue (its name, op and the parser's message),
    each matched jetmoe node a note."""
    issues = issues + [LintIssue(v.name, v.op, f"refused by the parser: {v.message}") for v in parsed.refused]
    notes = [f"{v.name} ({v.op}): matched to our plugin: {v.message}" for v in parsed.plugin_nodes if v.accepted]
    if parsed.not_reached:
        notes.append(f"{len(parsed.not_reached)} nodes after the first refused one were not reached (the parser "
                     f"stops there): first {parsed.not_reached[0].name} ({parsed.not_reached[0].op})")
    return LintReport(issues, sum(v.index >= 0 for v in parsed.nodes), parsed.check, notes)


def _missing_weights(graph, folder: Path) -> str | None:
    """The first external-data file the model's initializers name that is not in `folder`."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    for tensor in graph.graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            if not (folder / location).is_file():
                return location
    return None


def _recorded(model: Path, graph: onnx.ModelProto) -> tuple[str | None, int | None]:
    """(dispatch, num_hidden_layers) from the export.json beside the model; where there is none, the graph's own
    dispatch metadata (an unrolled copy's) or (None, None)."""
    if model.name == ORT_MODEL_NAME:
        return ORT_GRAPH, None
    if model.name != MODEL_NAME or not (model.parent / MANIFEST_NAME).is_file():
        return {p.key: p.value for p in graph.metadata_props}.get(DISPATCH_KEY), None
    manifest = read_manifest(model)
    return manifest.dispatch, manifest.model_config.num_hidden_layers
