"""TensorRT's ONNX operator support list as data, for linting exported ONNX graphs before a TensorRT build.

Transcribed (facts only: operator names, Y/N, listed types; restriction notes paraphrased) from the
"Supported ONNX Operators" table, file `docs/operators.md` of the GitHub repository `onnx/onnx-tensorrt`,
in the version whose header states TensorRT 10.15 (ONNX opsets 9 to 24). That is the newest version that was
available to us; its commit hash is not known (the stored copy carried none; the newest commit in a local
mirror of the repository, 96e781103cfc4adf4a6bb557e94bac8e693f6f4c, is only the 10.1 GA release). NVIDIA's
"ONNX Opset Guide" mentions TensorRT 11.x (ONNX 1.20, opset 25), but no 11.x copy of this table was available.

Type names are ONNX `TensorProto.DataType` enum names in upper case (FLOAT, FLOAT16, BFLOAT16, INT32, INT64,
BOOL, INT8, UINT8, FLOAT8E4M3FN, INT4, FLOAT4E2M1, ...). The document's own spellings ("FP32", "BF16", "FP8",
...) are mapped by `DOC_TYPE_TO_ONNX`; the document says "FP8" and "FP4" without a format, read here as
E4M3FN and E2M1, the ones TensorRT implements.

What the document says beyond the table, as facts:
- Types listed for the parser overall: `DOC_DATA_TYPES`. DOUBLE only in a limited way: the parser casts it
  down to FLOAT, clamping to the float range.
- INT8, INT4, FP8 and FP4 are quantized types: usable only via quantization from a wider float type
  (Q/DQ nodes), not as ordinary compute types (`QUANTIZED_TYPES`).
- UINT8 is allowed only as a network input or output type (`IO_ONLY_TYPES`).

A per-op type set tells which element types the op's data tensors may have; index, shape and axes inputs
(INT32 or INT64 in ONNX) follow the op's own ONNX schema and are not what the set is about.
"""

from __future__ import annotations

SOURCE_REPO: str = "onnx/onnx-tensorrt"
SOURCE_PATH: str = "docs/operators.md"
SOURCE_COMMIT: str | None = None  # not known for the 10.15 copy; see the module docstring
TRT_VERSION: str = "10.15"
OPSET_MIN: int = 9
OPSET_MAX: int = 24

# The document's type spellings (table and header) -> ONNX TensorProto data type names.
DOC_TYPE_TO_ONNX: dict[str, str] = {
    "DOUBLE": "DOUBLE",
    "FP32": "FLOAT",
    "FLOAT32": "FLOAT",
    "FP16": "FLOAT16",
    "FLOAT16": "FLOAT16",
    "BF16": "BFLOAT16",
    "BFLOAT16": "BFLOAT16",
    "FP8": "FLOAT8E4M3FN",
    "FP4": "FLOAT4E2M1",
    "INT32": "INT32",
    "INT64": "INT64",
    "INT8": "INT8",
    "INT4": "INT4",
    "UINT8": "UINT8",
    "BOOL": "BOOL",
}


def _types(*doc_names: str) -> frozenset[str]:
    """The ONNX names of the document's type spellings (raises KeyError on an unknown one)."""
    return frozenset(DOC_TYPE_TO_ONNX[name] for name in doc_names)


# Data types the document lists for the parser as a whole (header, not the table).
DOC_DATA_TYPES: frozenset[str] = _types(
    "DOUBLE", "FLOAT32", "FLOAT16", "BFLOAT16", "FP8", "FP4", "INT32", "INT64", "INT8", "INT4", "UINT8",
    "BOOL",
)
QUANTIZED_TYPES: frozenset[str] = _types("INT8", "INT4", "FP8", "FP4")
IO_ONLY_TYPES: frozenset[str] = _types("UINT8")

# Ops marked Y, in the table's order, with the types listed for each.
SUPPORTED: dict[str, frozenset[str]] = {
    "Abs": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Acos": _types("FP32", "FP16", "BF16"),
    "Acosh": _types("FP32", "FP16", "BF16"),
    "Add": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "And": _types("BOOL"),
    "ArgMax": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ArgMin": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Asin": _types("FP32", "FP16", "BF16"),
    "Asinh": _types("FP32", "FP16", "BF16"),
    "Atan": _types("FP32", "FP16", "BF16"),
    "Atanh": _types("FP32", "FP16", "BF16"),
    "Attention": _types("FP32", "FP16", "BF16", "INT8", "FP8"),
    "AveragePool": _types("FP32", "FP16", "BF16"),
    "BatchNormalization": _types("FP32", "FP16", "BF16"),
    "BlackmanWindow": _types("FP32", "FP16"),
    "Cast": _types("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"),
    "CastLike": _types("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"),
    "Ceil": _types("FP32", "FP16", "BF16"),
    "Celu": _types("FP32", "FP16", "BF16"),
    "Clip": _types("FP32", "FP16", "BF16"),
    "Concat": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Constant": _types("FP32", "FP16", "BF16", "FP8", "FP4", "INT4", "INT32", "INT64", "BOOL"),
    "ConstantOfShape": _types("FP32", "FP16", "BF16", "FP8", "FP4", "INT4", "INT32", "INT64", "BOOL"),
    "Conv": _types("FP32", "FP16", "BF16"),
    "ConvTranspose": _types("FP32", "FP16", "BF16"),
    "Cos": _types("FP32", "FP16", "BF16"),
    "Cosh": _types("FP32", "FP16", "BF16"),
    "CumSum": _types("FP32", "FP16", "BF16"),
    "DeformConv": _types("FP32", "FP16"),
    "DepthToSpace": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "DequantizeLinear": _types("INT8", "FP8", "FP4", "INT4"),
    "Div": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Dropout": _types("FP32", "FP16", "BF16"),
    "Einsum": _types("FP32", "FP16", "BF16"),
    "Elu": _types("FP32", "FP16", "BF16"),
    "Equal": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Erf": _types("FP32", "FP16", "BF16"),
    "Exp": _types("FP32", "FP16", "BF16"),
    "Expand": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "EyeLike": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Flatten": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Floor": _types("FP32", "FP16", "BF16"),
    "Gather": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "GatherElements": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "GatherND": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Gelu": _types("FP32", "FP16", "BF16", "INT8", "INT32", "INT64"),
    "Gemm": _types("FP32", "FP16", "BF16"),
    "GlobalAveragePool": _types("FP32", "FP16", "BF16"),
    "GlobalLpPool": _types("FP32", "FP16", "BF16"),
    "GlobalMaxPool": _types("FP32", "FP16", "BF16"),
    "Greater": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "GreaterOrEqual": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "GridSample": _types("FP32", "FP16"),
    "GroupNormalization": _types("FP32", "FP16", "BF16"),
    "GRU": _types("FP32", "FP16", "BF16"),
    "HammingWindow": _types("FP32", "FP16"),
    "HannWindow": _types("FP32", "FP16"),
    "HardSigmoid": _types("FP32", "FP16", "BF16"),
    "HardSwish": _types("FP32", "FP16", "BF16"),
    "Hardmax": _types("FP32", "FP16", "BF16"),
    "Identity": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "If": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "ImageScaler": _types("FP32", "FP16", "BF16"),
    "InstanceNormalization": _types("FP32", "FP16", "BF16"),
    "IsInf": _types("FP32", "FP16", "BF16"),
    "IsNaN": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "LayerNormalization": _types("FP32", "FP16", "BF16"),
    "LeakyRelu": _types("FP32", "FP16", "BF16"),
    "Less": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "LessOrEqual": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Log": _types("FP32", "FP16", "BF16"),
    "LogSoftmax": _types("FP32", "FP16", "BF16"),
    "Loop": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "LRN": _types("FP32", "FP16", "BF16"),
    "LSTM": _types("FP32", "FP16", "BF16"),
    "LpNormalization": _types("FP32", "FP16", "BF16"),
    "LpPool": _types("FP32", "FP16", "BF16"),
    "MatMul": _types("FP32", "FP16", "BF16"),
    "Max": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "MaxPool": _types("FP32", "FP16", "BF16"),
    "Mean": _types("FP32", "FP16", "BF16", "FP8", "INT32", "INT64"),
    "MeanVarianceNormalization": _types("FP32", "FP16", "BF16"),
    "Min": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Mish": _types("FP32", "FP16"),
    "Mod": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Mul": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Neg": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "NonMaxSuppression": _types("FP32", "FP16"),
    "NonZero": _types("FP32", "FP16"),
    "Not": _types("BOOL"),
    "OneHot": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Or": _types("BOOL"),
    "Pad": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ParametricSoftplus": _types("FP32", "FP16", "BF16"),
    "Pow": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "PRelu": _types("FP32", "FP16", "BF16"),
    "QuantizeLinear": _types("FP32", "FP16", "BF16"),
    "RandomNormal": _types("FP32", "FP16", "BF16"),
    "RandomNormalLike": _types("FP32", "FP16", "BF16"),
    "RandomUniform": _types("FP32", "FP16", "BF16"),
    "RandomUniformLike": _types("FP32", "FP16", "BF16"),
    "Range": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Reciprocal": _types("FP32", "FP16", "BF16"),
    "ReduceL1": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceL2": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceLogSum": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceLogSumExp": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceMax": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceMean": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceMin": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceProd": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceSum": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ReduceSumSquare": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Relu": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Reshape": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Resize": _types("FP32", "FP16", "BF16"),
    "ReverseSequence": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "RMSNormalization": _types("FP32", "FP16", "BF16"),
    "RNN": _types("FP32", "FP16", "BF16"),
    "RoiAlign": _types("FP32", "FP16"),
    "RotaryEmbedding": _types("FP32", "FP16", "BF16"),
    "Round": _types("FP32", "FP16", "BF16"),
    "STFT": _types("FP32"),
    "ScaledTanh": _types("FP32", "FP16", "BF16"),
    "Scan": _types("FP32", "FP16", "BF16"),
    "Scatter": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ScatterElements": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "ScatterND": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Selu": _types("FP32", "FP16", "BF16"),
    "Shape": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Shrink": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Sigmoid": _types("FP32", "FP16", "BF16"),
    "Sign": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Sin": _types("FP32", "FP16", "BF16"),
    "Sinh": _types("FP32", "FP16", "BF16"),
    "Size": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Slice": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Softmax": _types("FP32", "FP16", "BF16"),
    "Softplus": _types("FP32", "FP16", "BF16"),
    "Softsign": _types("FP32", "FP16", "BF16"),
    "SpaceToDepth": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Split": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Sqrt": _types("FP32", "FP16", "BF16"),
    "Squeeze": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Sub": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Sum": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Tan": _types("FP32", "FP16", "BF16"),
    "Tanh": _types("FP32", "FP16", "BF16"),
    "TensorScatter": _types("FP32", "FP16", "BF16", "INT32"),
    "ThresholdedRelu": _types("FP32", "FP16", "BF16"),
    "Tile": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "TopK": _types("FP32", "FP16", "BF16", "INT32", "INT64"),
    "Transpose": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Trilu": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Unsqueeze": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Upsample": _types("FP32", "FP16", "BF16"),
    "Where": _types("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"),
    "Xor": _types("BOOL"),
}

# Ops marked N.
UNSUPPORTED: frozenset[str] = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})

# The table's restriction notes, paraphrased. Keys are supported ops, except DynamicQuantizeLinear (an N row).
_REDUCE_NOTE = "`axes` must be an initializer."
RESTRICTIONS: dict[str, str] = {
    "Attention": (
        "Q, K, V and attn_mask must be rank 4. Not supported: inputs past_key, past_value, nonpad_kv_seqlen; "
        "outputs present_key, present_value, qk_matmul_output; attributes qk_matmul_output_mode, softcap. "
        "Head counts (q_num_heads, kv_num_heads) are taken from dimension 1 of Q and of K/V."
    ),
    "AveragePool": "2-D or 3-D pooling only; `dilations` must be absent or all 1.",
    "Constant": "The sparse_value, value_string and value_strings attributes are not supported.",
    "CumSum": "`axis` must be known at build time.",
    "DeformConv": "`input` needs 1 or 2 spatial dims; begin and end `pads` must match on each spatial axis.",
    "DequantizeLinear": "`x_zero_point` must be 0.",
    "Dropout": "`is_training` must be an initializer whose value is false.",
    "DynamicQuantizeLinear": (
        "Not supported as an op; TensorRT's dynamic-quantize layer can be reached instead through an ONNX "
        "model-local function built from ONNX ops."
    ),
    "EyeLike": "`input` must have static dimensions.",
    "GridSample": "Input must be rank 4.",
    "GRU": "Bidirectional: forward and reverse passes must use the same activation functions.",
    "Hardmax": "The size of the input's `axis` dimension must be known at build time.",
    "If": "The two branches' outputs must have equal ranks and distinct names.",
    "LayerNormalization": "Only the first output (Y) is supported; Mean and InvStdDev outputs are not.",
    "Loop": (
        "Scan outputs cannot have a dynamic length; loop-carried values must keep the same shape in every "
        "iteration."
    ),
    "LSTM": (
        "Bidirectional: forward and reverse passes must use the same activation functions. "
        "`input_forget` must be 0 and `layout` must be 0."
    ),
    "LpPool": "`dilations` must be absent or all 1.",
    "MaxPool": "2-D or 3-D pooling only; the `Indices` output is not supported; `dilations` absent or all 1.",
    "OneHot": "`depth` must be known at build time.",
    "QuantizeLinear": "`y_zero_point` must be 0.",
    "RandomNormal": "`seed` is ignored.",
    "RandomNormalLike": "`seed` is ignored.",
    "RandomUniform": "`seed` is ignored.",
    "RandomUniformLike": "`seed` is ignored.",
    "ReduceL1": _REDUCE_NOTE,
    "ReduceL2": _REDUCE_NOTE,
    "ReduceLogSum": _REDUCE_NOTE,
    "ReduceLogSumExp": _REDUCE_NOTE,
    "ReduceMax": _REDUCE_NOTE,
    "ReduceMean": _REDUCE_NOTE,
    "ReduceMin": _REDUCE_NOTE,
    "ReduceProd": _REDUCE_NOTE,
    "ReduceSum": _REDUCE_NOTE,
    "ReduceSumSquare": _REDUCE_NOTE,
    "Resize": (
        "coordinate_transformation_mode in {half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, "
        "asymmetric, align_corners}; mode in {nearest, linear} (no cubic); nearest_mode in {floor, ceil, "
        "round_prefer_floor, round_prefer_ceil}; keep_aspect_ratio_policy only stretch; with `scales` given "
        "as a tensor input, `axes` must be 0..rank-1 in order; antialias not supported."
    ),
    "RNN": "Bidirectional: forward and reverse passes must use the same activation functions.",
    "RotaryEmbedding": "`position_ids` must be INT64.",
    "ScatterND": "Only `reduction` = none; add, mul, max and min are not supported.",
    "Squeeze": "`axes` must resolve to a constant.",
    "STFT": "`frame_step` and `window` must be initializers; the signal must be real (not complex).",
    "TensorScatter": "`past_cache` and `update` must be rank 4 and `axis` must be -2.",
    "TopK": "`sorted` must be 1, and K must be below 3840.",
    "Unsqueeze": "`axes` must resolve to a constant.",
}

# Ops whose output shape depends on the values (not just the shapes) of execution tensors, per the ONNX spec:
# TensorRT handles these as data-dependent shapes, or not at all. Ops whose output shape comes from a
# shape-like input (Reshape, Expand, Tile, Range, ConstantOfShape, Slice, Pad, Resize, OneHot, Split, the K of
# TopK, ...) are left out: that input is a shape tensor, resolved before execution, and a lint should judge it
# separately (is it a constant, or computed from shapes?).
DATA_DEPENDENT_SHAPE_OPS: frozenset[str] = frozenset({
    "NonZero",  # one index per non-zero element
    "NonMaxSuppression",  # number of selected boxes
    "Unique",  # number of distinct values
    "Compress",  # number of true entries in `condition`
    "Loop",  # trip count / condition decided at run time; scan outputs grow per iteration
    "If",  # branch chosen by the runtime condition; branches may yield different shapes
    "Scan",  # listed for the lint: subgraph body, outputs built per iteration
    "StringSplit",  # number of substrings (unsupported by TensorRT anyway)
    "ImageDecoder",  # height and width come from the encoded image (unsupported by TensorRT anyway)
})

__all__ = [
    "DATA_DEPENDENT_SHAPE_OPS",
    "DOC_DATA_TYPES",
    "DOC_TYPE_TO_ONNX",
    "IO_ONLY_TYPES",
    "OPSET_MAX",
    "OPSET_MIN",
    "QUANTIZED_TYPES",
    "RESTRICTIONS",
    "SOURCE_COMMIT",
    "SOURCE_PATH",
    "SOURCE_REPO",
    "SUPPORTED",
    "TRT_VERSION",
    "UNSUPPORTED",
]
