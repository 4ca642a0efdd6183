"""The one dtype vocabulary: each element type's name in torch, numpy, ONNX, TensorRT and Triton.

    dtype("bf16") is dtype("bfloat16") is dtype(torch.bfloat16) is BF16
    BF16.onnx_type == "tensor(bfloat16)"; BF16.trt == "BF16"; BF16.triton == "bf16"

Canonical names are the short ones (`fp32`, `fp16`, `bf16`, `int32`, `int64`, `bool`): every command prints
them, and accepts the long spellings (`float32`, `torch.float16`, ...) as well. ONNX numbers are
`onnx.TensorProto.DataType` values (tests check them against onnx); TensorRT names are `tensorrt.DataType`
member names (FLOAT, HALF, BF16, INT32, INT64, BOOL) and `tensorrt.plugin`'s type strings (FP32, FP16, ...);
Triton names are its signature type strings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from jetmoe.errors import InputError


@dataclasses.dataclass(frozen=True)
class DType:
    name: str  # canonical: fp32, fp16, bf16, int32, int64, bool
    torch: torch.dtype
    numpy: Any  # numpy dtype; None for bf16 (numpy has none: bf16 crosses numpy as float32)
    onnx: int  # onnx.TensorProto.DataType
    trt: str  # tensorrt.DataType member name
    qdp: str  # the type name in tensorrt.plugin's AutoTuneCombination strings
    triton: str  # triton signature type
    aliases: tuple[str, ...] = ()

    @property
    def onnx_type(self) -> str:
        """The ONNX type string of a tensor of this type, as in op schemas: tensor(float), tensor(bfloat16)."""
        return f"tensor({_ONNX_TYPE_NAMES[self.onnx]})"

    @property
    def hf_name(self) -> str:
        """The name HF config.json files use (`dtype`, `torch_dtype`): torch's without "torch."; float32."""
        return str(self.torch).removeprefix("torch.")

    @property
    def is_float(self) -> bool:
        return self.torch.is_floating_point

    @property
    def itemsize(self) -> int:
        return self.torch.itemsize

    def __str__(self) -> str:
        return self.name


FP32 = DType("fp32", torch.float32, np.float32, 1, "FLOAT", "FP32", "fp32", ("float32", "float", "torch.float32"))
FP16 = DType("fp16", torch.float16, np.float16, 10, "HALF", "FP16", "fp16", ("float16", "half", "torch.float16"))
BF16 = DType("bf16", torch.bfloat16, None, 16, "BF16", "BF16", "bf16", ("bfloat16", "torch.bfloat16"))
INT32 = DType("int32", torch.int32, np.int32, 6, "INT32", "INT32", "i32", ("torch.int32",))
INT64 = DType("int64", torch.int64, np.int64, 7, "INT64", "INT64", "i64", ("torch.int64", "long"))
BOOL = DType("bool", torch.bool, np.bool_, 9, "BOOL", "BOOL", "i1", ("torch.bool",))

ALL = (FP32, FP16, BF16, INT32, INT64, BOOL)
FLOATS = (FP32, FP16, BF16)  # activation and weight types of the model and every graph
INDEXES = (INT32, INT64)  # expert indices (ONNX TopK gives int64, a TensorRT TopK may give int32)
FLOAT_NAMES = tuple(t.name for t in FLOATS)

_ONNX_TYPE_NAMES = {1: "float", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64", 9: "bool"}
_BY_NAME = {alias: t for t in ALL for alias in (t.name, *t.aliases)}
_BY_TORCH = {t.torch: t for t in ALL}
_BY_ONNX = {t.onnx: t for t in ALL}
_BY_TRT = {t.trt: t for t in ALL} | {t.qdp: t for t in ALL}


def dtype(value: Any, allowed: tuple[DType, ...] = ALL, what: str = "dtype") -> DType:
    """The DType of a name (any spelling), torch dtype, numpy dtype, ONNX enum value or TensorRT DataType.

    Raises InputError naming the value and the allowed names when it is unknown or not in `allowed`.
    """
    found = lookup(value)
    if found is None or found not in allowed:
        names = ", ".join(t.name for t in allowed)
        raise InputError(f"{what} {_show(value)} is not one of {names}")
    return found


def float_dtype(value: Any, what: str = "dtype") -> DType:
    """`dtype` restricted to the float types (fp32, fp16, bf16)."""
    return dtype(value, FLOATS, what)


def lookup(value: Any) -> DType | None:
    """The DType of `value` (any form `dtype` accepts), or None."""
    if isinstance(value, DType):
        return value
    if isinstance(value, torch.dtype):
        return _BY_TORCH.get(value)
    if isinstance(value, str):
        return _BY_NAME.get(value.strip().lower())
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return _BY_ONNX.get(int(value))
    name = getattr(value, "name", None)  # a tensorrt.DataType member
    if isinstance(name, str) and name in _BY_TRT and not isinstance(value, np.dtype):
        return _BY_TRT[name]
    try:
        as_numpy = np.dtype(value)
    except TypeError:
        return None
    return next((t for t in ALL if t.numpy is not None and np.dtype(t.numpy) == as_numpy), None)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
