"""What TensorRT's (or TensorRT-RTX's) own ONNX parser says about a model, node by node (`jetmoe lint`).

    report = parse_report("out/model.onnx", "tensorrt-rtx")
    print(report)          # the refused nodes with the parser's messages, and the plugin match of every jetmoe node
    bool(report)           # every node accepted (a jetmoe node: matched to our plugin)

The parser stops at the first node it refuses (`parse` and `supports_model_v2` alike: the "subgraphs" the latter
reports after a failure are the nodes before and after it, neither re-checked), so one parse cannot judge every node
of a plugin export. Two passes:

1. graph: the model with each `jetmoe` node replaced by its portable gather body (export/portable.py; nodes named
   `<node>/...`), parsed whole, with its weights: every other node is accepted, or the first refused one is named
   with the parser's message and the nodes after it are "not reached".
2. plugins: each `jetmoe` node alone in a one-node model (its inputs, weight included, as graph inputs typed and
   shaped by ONNX shape inference: no weights loaded), parsed with our plugin registered. TensorRT: the real
   plugins (engines/plugins.py); the node must become a plugin layer. TensorRT-RTX cannot take them (it imports
   only IPluginV3 plugins from IPluginCreatorV3One creators, and has no `tensorrt.plugin`): a probe creator is
   registered under our plugin's name, version and namespace, records the parser's call and creates nothing; the
   node is matched when the parser called it for that node (the parser's "Could not create the plugin" that
   follows is expected, not a refusal). The probes are deregistered afterwards.

A portable export has no `jetmoe` node: pass 1 is the whole report. TensorRT is imported lazily, by flavour
(engines/flavour.py).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import tempfile
from pathlib import Path

import onnx

from engines import flavour as flavours
from export import portable, schema
from export.lint import load_graph
from jetmoe.errors import Unavailable
from jetmoe.op_contract import OPS

log = logging.getLogger(__name__)
NOT_REACHED = "not reached: the parser stops at the first node it refuses"


@dataclasses.dataclass(frozen=True)
class NodeVerdict:
    index: int  # in the model's main graph (-1: the model as a whole)
    name: str
    op: str  # the ONNX op type ("expert_map" for a jetmoe node)
    accepted: bool | None  # None: not reached
    message: str = ""  # the parser's, for a refusal or a plugin match

    @property
    def is_plugin(self) -> bool:
        return self.op in OPS

    def __str__(self) -> str:
        state = {True: "ok", False: "REFUSED", None: "not reached"}[self.accepted]
        return f"#{self.index} {self.name} ({self.op}): {state}" + (f": {self.message}" if self.message else "")


@dataclasses.dataclass(frozen=True)
class ParseReport:
    flavour: str
    version: str
    model: str
    nodes: list[NodeVerdict]
    layers: int  # of the pass-1 network

    def __bool__(self) -> bool:
        return all(v.accepted for v in self.nodes)

    @property
    def check(self) -> str:
        return f"{self.flavour} {self.version} ONNX parser"

    @property
    def refused(self) -> list[NodeVerdict]:
        return [v for v in self.nodes if v.accepted is False]

    @property
    def not_reached(self) -> list[NodeVerdict]:
        return [v for v in self.nodes if v.accepted is None]

    @property
    def plugin_nodes(self) -> list[NodeVerdict]:
        return [v for v in self.nodes if v.is_plugin]

    def __str__(self) -> str:
        head = (f"{self.check} on {self.model}: {len(self.nodes)} nodes, {len(self.refused)} refused, "
                f"{len(self.not_reached)} not reached; {self.layers} network layers")
        return "\n".join([head] + [f"  {v}" for v in self.refused + [p for p in self.plugin_nodes if p.accepted]])


def parse_report(model_path: str | os.PathLike, flavour: str) -> ParseReport:
    """Both passes on model.onnx (its external data beside it). Raises Unavailable without the flavour."""
    trt = flavours.import_tensorrt(flavour)
    model_path = Path(model_path)
    model = load_graph(model_path)
    verdicts, layers = _graph_pass(trt, model, model_path)
    jetmoe = [i for i, n in enumerate(model.graph.node) if n.domain == schema.DOMAIN]
    if jetmoe:
        for i, verdict in _plugin_pass(trt, flavour, model, jetmoe):
            verdicts[i] = verdict
    return ParseReport(flavour, trt.__version__, str(model_path), verdicts, layers)


# ---- pass 1: the graph, jetmoe nodes as portable bodies ----------------------------------------------------------


def _graph_pass(trt, model: onnx.ModelProto, model_path: Path) -> tuple[list[NodeVerdict], int]:
    original = list(model.graph.node)
    checked = onnx.ModelProto()
    checked.CopyFrom(model)
    for i, node in enumerate(checked.graph.node):  # every node named, so the parsed ones map back to it
        node.name = node.name or f"#{i}"
    owner = {n.name: i for i, n in enumerate(checked.graph.node)}
    if any(n.domain == schema.DOMAIN for n in original):
        # the gather body needs neither E nor K (they only size the dense body and the switch)
        portable.inline_portable(checked, num_experts=1, top_k=1, opset=_opset(model), body="gather")
    parsed_owner = [owner.get(n.name, owner.get(n.name.split("/", 1)[0])) for n in checked.graph.node]

    logger = _collector(trt, trt.ILogger.Severity.WARNING)
    builder = _builder(trt, logger)
    network = builder.create_network(_strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    log.info("parsing %s with %s %s", model_path, trt.__name__, trt.__version__)
    ok = parser.parse(checked.SerializeToString(), str(model_path))  # the path: where the external data lives
    failed_at: dict[int | None, str] = {}  # original node index -> the parser's message
    for k in range(parser.num_errors):
        error = parser.get_error(k)
        index = error.node()
        origin = parsed_owner[index] if 0 <= index < len(parsed_owner) else None
        inside = (f" (inside {' > '.join(error.local_function_stack())})"
                  if error.local_function_stack_size() else "")
        failed_at.setdefault(origin, f"{error.node_operator() or 'model'}: {error.desc()}{inside}")
    layers = network.num_layers
    del parser, network, builder  # the parser holds the weights
    gc.collect()
    first_failure = min((i for i in failed_at if i is not None), default=len(original))
    verdicts = []
    for i, node in enumerate(original):
        name = node.name or f"#{i}"
        if ok or i < first_failure:
            verdicts.append(NodeVerdict(i, name, node.op_type, True))
        elif i in failed_at:
            verdicts.append(NodeVerdict(i, name, node.op_type, False, failed_at[i]))
        else:
            verdicts.append(NodeVerdict(i, name, node.op_type, None, NOT_REACHED))
    if not ok and (None in failed_at or not failed_at):  # an error tied to no node (the model itself)
        verdicts.append(NodeVerdict(-1, "<model>", "model", False,
                                    failed_at.get(None, "the parser refused the model and gave no error")))
    return verdicts, layers


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# ---- pass 2: each jetmoe node alone, with our plugin (or a probe of it) registered -------------------------------


def _plugin_pass(trt, flavour: str, model: onnx.ModelProto, indices: list[int]):
    types = _value_types(model)
    probes, reason = _register(trt, flavour)
    try:
        for i in indices:
            node = model.graph.node[i]
            name = node.name or f"#{i}"
            if reason:
                yield i, NodeVerdict(i, name, node.op_type, False, reason)
                continue
            logger = _collector(trt, trt.ILogger.Severity.INFO)
            network = _builder(trt, logger).create_network(_network_flags(trt, flavour))
            parser = trt.OnnxParser(network, logger)
            with tempfile.TemporaryDirectory() as tmp:  # the weights are inputs: nothing external to read
                path = Path(tmp) / "node.onnx"
                onnx.save(_single_node_model(model, node, types), path)
                ok = parser.parse_from_file(str(path))
            errors = "; ".join(parser.get_error(k).desc() for k in range(parser.num_errors))
            searched = "; ".join(m for m in logger.lines if "Searching for plugin" in m or "Plugin not found" in m)
            if probes:  # TensorRT-RTX: did the parser ask our creator for this node?
                matched = node.name in probes[node.op_type].calls
                tail = f"our creator was called for {node.name}" if matched else f"parser: {errors}"
            else:
                kinds = {network.get_layer(k).type.name for k in range(network.num_layers)}
                matched = ok and "PLUGIN_V3" in kinds
                tail = "a plugin layer was created" if matched else errors
            yield i, NodeVerdict(i, name, node.op_type, matched, "; ".join(filter(None, [searched, tail])))
    finally:
        registry = trt.get_plugin_registry()
        for probe in (probes or {}).values():
            registry.deregister_creator(probe)


def _register(trt, flavour: str) -> tuple[dict | None, str]:
    """TensorRT: register the real plugins -> (None, ""). TensorRT-RTX: register and return one probe per op.
    A reason instead when registration is impossible here."""
    from engines.plugins import PLUGINS

    if flavour == flavours.TENSORRT.name:
        from engines.plugins import register_plugins

        try:
            register_plugins()
        except Unavailable as e:
            return None, f"our plugins cannot be registered here: {e}"
        return None, ""

    class Probe(trt.IPluginCreatorV3One):
        """Registered as our plugin; records each node the parser asks it for, and creates nothing."""

        def __init__(self, spec) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = spec.name, spec.namespace, spec.version
            self.field_names = trt.PluginFieldCollection([])
            self.calls: list[str] = []

        def create_plugin(self, name, field_collection, phase):
            self.calls.append(name)  # no plugin (None): the parser then says "Could not create the plugin"

    probes = {name: Probe(spec) for name, spec in PLUGINS.items()}
    registry = trt.get_plugin_registry()
    for name, probe in list(probes.items()):
        if not registry.register_creator(probe, probe.plugin_namespace):
            for other in list(probes.values())[:list(probes).index(name)]:
                registry.deregister_creator(other)
            return None, (f"a creator for {probe.plugin_namespace}::{probe.name} version {probe.plugin_version} is "
                          f"already registered in this process: the match cannot be probed")
    return probes, ""


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    types = {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}
    for t in graph.initializer:
        types[t.name] = onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return types


def _single_node_model(model: onnx.ModelProto, node: onnx.NodeProto, types) -> onnx.ModelProto:
    missing = [name for name in node.input if name not in types]
    assert not missing, f"shape inference gave no type for {missing}"
    inputs = [onnx.helper.make_value_info(name, types[name]) for name in node.input]
    outputs = [onnx.helper.make_value_info(name, types.get(name, onnx.TypeProto())) for name in node.output]
    graph = onnx.helper.make_graph([node], f"single_{node.name}", inputs, outputs)
    return onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


# ---- helpers -----------------------------------------------------------------------------------------------------


def _builder(trt, logger):
    """trt.Builder, or Unavailable: full TensorRT needs a CUDA device even to parse (TensorRT-RTX does not)."""
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as e:  # pybind11: "factory function returned nullptr"
        raise Unavailable(f"{trt.__name__} {trt.__version__} cannot create a builder here ({e}); full TensorRT "
                          f"needs a CUDA GPU even to parse") from None
    if not builder:
        raise Unavailable(f"{trt.__name__} {trt.__version__} cannot create a builder here")
    return builder


def _strongly_typed(trt) -> int:
    kinds = trt.NetworkDefinitionCreationFlag
    return 1 << int(kinds.STRONGLY_TYPED) if hasattr(kinds, "STRONGLY_TYPED") else 0


def _network_flags(trt, flavour: str) -> int:
    if flavour != flavours.TENSORRT.name:
        return _strongly_typed(trt)
    from engines.builder import network_flags

    return network_flags(trt, "aot")  # full TensorRT wants a preference when a QDP has AOT and JIT implementations


def _collector(trt, level):
    """A trt.ILogger that keeps the messages at `level` and more severe."""

    class Collector(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            if severity <= level:
                self.lines.append(msg)

    return Collector()
