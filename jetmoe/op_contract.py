"""The expert-dispatch op contract as data (docs/ops.md): one definition per op, from which the torch custom
ops (jetmoe/ops.py), the ONNX schemas and local functions (export/), the Triton launchers' checks and the
TensorRT plugins (engines/) are all derived.

    map     x[T, D], expert_idx[T, K], weight[E, N, D]                          -> y[T, K, N]
            y[t, j] = weight[expert_idx[t, j]] @ x[t]
    reduce  h[T, K, N], expert_idx[T, K], gates[T, K], weight[E, D, N], bias[D] -> y[T, D]
            y[t] = sum_j gates[t, j] * (weight[expert_idx[t, j]] @ h[t, j]) + bias

Letters: T tokens, K experts per token (top-k), E experts, D model width, N expert width. Every size comes
from the input shapes: the ops have no attributes. Float tensors share one type (fp32, fp16 or bf16); expert
indices are int32 or int64. An expert index outside [0, E) is an error in the eager op; the kernels of a
deployment treat it as contributing nothing (TensorRT times plugins on made-up inputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from jetmoe import dtypes
from jetmoe.errors import InputError

NAMESPACE = "jetmoe"  # torch library namespace, ONNX domain, TensorRT plugin namespace (no dots allowed there)
VERSION = "1"  # TensorRT plugin version (Quickly Deployable Plugins are always "1")
ONNX_OPSET_VERSION = 1  # of the `jetmoe` ONNX domain


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[str, ...]  # dimension letters
    kind: str  # "float" (the op's float type) or "index" (int32/int64)

    @property
    def dtypes(self) -> tuple[dtypes.DType, ...]:
        return dtypes.FLOATS if self.kind == "float" else dtypes.INDEXES


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    formula: str

    @property
    def qualified_name(self) -> str:
        """`jetmoe::expert_map`: the torch op and the TensorRT plugin id."""
        return f"{NAMESPACE}::{self.name}"

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def dim_sources(self) -> dict[str, tuple[int, int]]:
        """letter -> (input index, axis) of its first appearance among the inputs."""
        sources: dict[str, tuple[int, int]] = {}
        for i, spec in enumerate(self.inputs):
            for axis, letter in enumerate(spec.shape):
                sources.setdefault(letter, (i, axis))
        return sources

    def output_dims(self) -> list[list[tuple[int, int]]]:
        """Per output, per axis, the (input index, axis) its size is read from."""
        sources = self.dim_sources()
        return [[sources[letter] for letter in out.shape] for out in self.outputs]

    def check(self, shapes: Sequence[Sequence[int]], types: Sequence[object]) -> dict[str, int]:
        """Check input shapes and dtypes against the contract; return the letter sizes. Raises InputError."""
        if len(shapes) != len(self.inputs):
            raise InputError(f"{self.qualified_name} takes {len(self.inputs)} inputs, got {len(shapes)}")
        sizes: dict[str, int] = {}
        float_type = None
        for spec, shape, dtype in zip(self.inputs, shapes, types, strict=True):
            shape = tuple(shape)
            bad_rank = len(shape) != len(spec.shape)
            if bad_rank or any(sizes.get(letter, size) != size for letter, size in zip(spec.shape, shape, strict=True)):
                want = ", ".join(f"{x}={sizes[x]}" if x in sizes and not bad_rank else x for x in spec.shape)
                raise InputError(f"{self.qualified_name}: {spec.name} must be [{want}], got shape {shape}")
            sizes.update(zip(spec.shape, shape, strict=True))
            kind = dtypes.lookup(dtype)
            if kind not in spec.dtypes:
                names = "/".join(t.name for t in spec.dtypes)
                raise InputError(f"{self.qualified_name}: {spec.name} must be {names}, got {dtype}")
            if spec.kind == "float":
                if float_type is not None and kind != float_type:
                    raise InputError(f"{self.qualified_name}: float inputs must share a float type, got "
                                     f"{float_type} and {kind} ({spec.name})")
                float_type = kind
        return sizes

    def output_shapes(self, sizes: Mapping[str, int]) -> list[tuple[int, ...]]:
        return [tuple(sizes[letter] for letter in out.shape) for out in self.outputs]


def _t(name: str, shape: str, kind: str = "float") -> TensorSpec:
    return TensorSpec(name, tuple(shape.split()), kind)


EXPERT_MAP = OpSpec(
    "expert_map",
    inputs=(_t("x", "T D"), _t("expert_idx", "T K", "index"), _t("weight", "E N D")),
    outputs=(_t("y", "T K N"),),
    formula="y[t, j] = weight[expert_idx[t, j]] @ x[t]",
)
EXPERT_REDUCE = OpSpec(
    "expert_reduce",
    inputs=(_t("h", "T K N"), _t("expert_idx", "T K", "index"), _t("gates", "T K"), _t("weight", "E D N"),
            _t("bias", "D")),
    outputs=(_t("y", "T D"),),
    formula="y[t] = sum_j gates[t, j] * (weight[expert_idx[t, j]] @ h[t, j]) + bias",
)
OPS: dict[str, OpSpec] = {op.name: op for op in (EXPERT_MAP, EXPERT_REDUCE)}
