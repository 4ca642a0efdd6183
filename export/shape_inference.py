"""ONNX Runtime's symbolic shape inference through our graphs, without `--auto_merge` (docs/ecosystem.md).

    python -m export.shape_inference exp/model.onnx exp/model.shapes.onnx     # beside model.onnx.data

ORT's `python -m onnxruntime.tools.symbolic_shape_infer` (a usual step before TensorRT tooling) stops on an
export for two reasons, both handled here:

1. It knows no `jetmoe` op: their outputs get fresh symbols (`expert_map_35_o0__d2`), so the MoE's SwiGLU halves
   (`Min(96, d)` and `d - 96`) cannot be merged and inference stops just after the first MoE `expert_map`. The
   class has no registration API, but its `dispatcher_` (op_type -> handler) is an instance attribute: a subclass
   adds `expert_map -> y [T, K, N]` and `expert_reduce -> y [T, D]` (the op contract, docs/ops.md).
2. The attention mask's width is its own input symbol (`total_seq`) while the keys' length is computed as
   `past_seq + seq`; nothing in the graph says they are equal, so the mask's `And` gets fresh symbols and the
   `scores + mask` Add stops inference. The copy inferred here names the mask's width `past_seq + seq`, the string
   ORT's sympy dims print as (Optimum's exports name it the same way).

With `--auto_merge` the stock tool completes, but merges `total_seq` into the mask's fresh symbols and gives the
`jetmoe` outputs (and everything computed from them) invented sizes; in a process where the `jetmoe` OpSchema is
registered (any process that exported) it stops at the first `expert_map` even with it. Here every size is exact.
Weights are never read: inference runs on a copy where they are graph inputs of the same type and shape. Tools that
call `SymbolicShapeInference.infer_shapes` themselves (ORT's transformer optimizer, quantization pre-processing)
still do not see the handlers.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import onnx

from export.lint import load_graph
from export.schema import DOMAIN
from jetmoe.errors import ExportError, InputError, JetMoeError, Unavailable
from jetmoe.fileio import atomic_write_bytes, check_output
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE

MASK_INPUT = "attention_mask"
TOTAL = "past_seq + seq"  # how ORT's sympy prints past_seq + seq, the present keys' length


def infer_symbolic_shapes(model: onnx.ModelProto, *, auto_merge: bool = False, verbose: int = 0) -> onnx.ModelProto:
    """A copy of `model` (loaded without its weights, or with them) with every value's symbolic shape.

    ORT's SymbolicShapeInference with handlers for the `jetmoe` ops; the inferred value_info and outputs are
    written into a copy of `model`, whose weights stay as they were (external ones external).
    """
    result = _with_mask_width_named(model)
    work = onnx.ModelProto()
    work.CopyFrom(result)
    external = [t for t in work.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    kept = [t for t in work.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del work.graph.initializer[:]
    work.graph.initializer.extend(kept)
    work.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external)
    inference = _inference_class()(2**31 - 1, auto_merge, False, verbose)
    inference._preprocess(work)  # the body of SymbolicShapeInference.infer_shapes, which builds its own class
    complete = False
    try:
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
    except Exception as e:  # the stock tool asserts where it meets a case it does not handle
        raise ExportError(f"ONNX Runtime's symbolic shape inference failed at {_stuck(inference)} "
                          f"({type(e).__name__}{': ' + str(e).splitlines()[0] if str(e) else ''})") from None
    if not complete:
        raise ExportError(f"symbolic shape inference stopped at {_stuck(inference)}: a size it cannot prove equal "
                          "to another (--auto-merge merges such sizes, unchecked)")
    inferred = inference.out_mp_.graph
    del result.graph.value_info[:]
    result.graph.value_info.extend(inferred.value_info)
    del result.graph.output[:]
    result.graph.output.extend(inferred.output)
    return result


def _stuck(inference) -> str:
    """The first node (in graph order) with an output the inference has no shape for."""
    for node in inference.out_mp_.graph.node:
        if any(name and name not in inference.known_vi_ for name in node.output):
            return f"node {node.name!r} ({node.op_type})"
    return "the graph's outputs"


def _with_mask_width_named(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if not any(v.name.startswith("past_key_values.") for v in copy.graph.input):
        return copy  # sequence classification: no past, the mask's width is seq
    for value in copy.graph.input:
        if value.name == MASK_INPUT:
            value.type.tensor_type.shape.dim[1].dim_param = TOTAL
    return copy


@functools.cache
def _inference_class() -> type:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        raise Unavailable("symbolic shape inference is ONNX Runtime's tool: pip install 'jetmoe-trt[ort]'") from None

    class JetMoeShapeInference(SymbolicShapeInference):
        """ORT's inference plus handlers for the `jetmoe` ops (its dispatcher is keyed by op_type alone)."""

        def __init__(self, *args) -> None:
            super().__init__(*args)
            self.dispatcher_[EXPERT_MAP.name] = self._infer_expert_map
            self.dispatcher_[EXPERT_REDUCE.name] = self._infer_expert_reduce

        def _set_output(self, node: onnx.NodeProto, shape: list) -> None:
            if node.domain != DOMAIN:
                raise ExportError(f"node {node.name!r}: {node.op_type} of domain {node.domain!r} is not ours")
            elem = self.known_vi_[node.input[0]].type.tensor_type.elem_type
            self.known_vi_[node.output[0]].CopyFrom(onnx.helper.make_tensor_value_info(node.output[0], elem, shape))

        def _infer_expert_map(self, node: onnx.NodeProto) -> None:
            idx, weight = self._get_shape(node, 1), self._get_shape(node, 2)  # expert_idx [T, K], weight [E, N, D]
            self._set_output(node, [idx[0], idx[1], weight[1]])  # y [T, K, N]

        def _infer_expert_reduce(self, node: onnx.NodeProto) -> None:
            idx, weight = self._get_shape(node, 1), self._get_shape(node, 3)  # expert_idx [T, K], weight [E, D, N]
            self._set_output(node, [idx[0], weight[1]])  # y [T, D]

    return JetMoeShapeInference


def infer_file(source: Path, target: Path, *, overwrite: bool = False, auto_merge: bool = False,
               verbose: int = 0) -> Path:
    """`source` with every symbolic shape, written to `target` in the same folder (its external weights are read
    from there, by relative name)."""
    if not Path(source).is_file():
        raise ExportError(f"no ONNX model at {source}")
    target = check_output(target, kind="file", overwrite=overwrite, inputs=[source])
    if target.absolute().parent.resolve() != source.absolute().parent.resolve():
        raise InputError(f"write {target.name} beside {source} (in {source.parent}): the model's weights stay in "
                         "its external data file, which the copy names by a path relative to its own folder")
    inferred = infer_symbolic_shapes(load_graph(source), auto_merge=auto_merge, verbose=verbose)
    atomic_write_bytes(target, inferred.SerializeToString())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.shape_inference", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="model.onnx")
    parser.add_argument("output", type=Path, help="the model with its shapes, to write beside the input")
    parser.add_argument("--auto-merge", action="store_true", help="as the stock tool's --auto_merge")
    parser.add_argument("--verbose", type=int, default=0, help="the stock tool's verbosity (3: every node)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output")
    args = parser.parse_args(argv)
    try:
        path = infer_file(args.input, args.output, overwrite=args.overwrite, auto_merge=args.auto_merge,
                          verbose=args.verbose)
    except JetMoeError as e:
        print(f"export.shape_inference: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, Unavailable) else 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
