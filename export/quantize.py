"""Integer experts for ONNX Runtime CPU (`jetmoe quantize`): unroll the `jetmoe` nodes, then quantize the experts.

    quantize_export("exp", "exp-int8")                               # weight-only int8 (MatMulNBits, bits=8)
    quantize_export("exp", "exp-int4", scheme="int4-weight-only")    # MatMulNBits, bits=4
    quantize_export("exp", "exp-dyn", scheme="int8-dynamic")         # quantize_dynamic: MatMulInteger

Only the per-expert MatMuls that export/unrolled.py makes are quantized (~97% of jetmoe-8b's weights): the routers
(Gemm on `*.router.layer.weight`), kv_proj, embeddings and lm_head stay as exported, so routing is decided on
float logits. `experts` picks the groups: "mlp" (the MoE experts, ~78% of jetmoe-8b's weights) and "attention"
(the MoA query/output experts, ~19%). The output folder is an export like any other (model.onnx,
model.onnx.data, export.json with `"dispatch": "unrolled"` and its `quantization`, the source's sidecar files):
OnnxrtRunner, `jetmoe generate` and `jetmoe validate --onnx` read it. It has no `jetmoe` node: ONNX Runtime only,
not TensorRT. Measurements (size, speed, agreement per scheme): docs/performance.md.

Memory: the unroll streams one expert at a time, but ONNX Runtime's quantizers hold the whole unrolled model
(its float weights) and the quantized copy in memory (4.3 GiB for 8B widths at 2 layers; 9 GiB for int8-dynamic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx

from export.manifest import DATA_NAME, MANIFEST_NAME, MODEL_NAME, Quantization, owned_by
from export.unrolled import copy_sidecars, derived_manifest, unrollable, write_unrolled
from jetmoe.errors import InputError, Unavailable
from jetmoe.fileio import atomic_directory, check_output

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scheme:
    kind: str  # "weight-only" (MatMulNBits) or "dynamic" (DynamicQuantizeLinear + MatMulInteger)
    bits: int


SCHEMES = {
    "int8-weight-only": Scheme("weight-only", 8),
    "int4-weight-only": Scheme("weight-only", 4),
    "int8-dynamic": Scheme("dynamic", 8),
}
EXPERT_GROUPS = {"mlp": ".mlp.", "attention": ".self_attention."}  # by the HF name of the expert weight


def quantize_export(
    export: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheme: str = "int8-weight-only",
    experts: tuple[str, ...] = ("mlp", "attention"),
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a copy of the fp32/fp16 plugin-dispatch `export` (its folder or model.onnx) with integer experts to
    `out_dir`; return its model.onnx.

    `block_size` (weight-only): input rows per scale, a power of two >= 16. `accuracy_level` (weight-only):
    MatMulNBits' activation precision on CPU; 4 (int8 activations) is the fast one, 0 (fp32 activations) was 17x
    slower than fp32 for 8-bit weights (docs/performance.md).
    """
    if scheme not in SCHEMES:
        raise InputError(f"unknown quantization scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise InputError(f"block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")
    unknown = sorted(set(experts) - set(EXPERT_GROUPS))
    if unknown or not experts:
        raise InputError(f"experts {list(experts)}: choose among {sorted(EXPERT_GROUPS)}")
    experts = tuple(group for group in EXPERT_GROUPS if group in experts)  # once each, in one order
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise InputError(f"accuracy_level must be 0..4 (MatMulNBits), got {accuracy_level}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise Unavailable("quantizing needs onnxruntime's quantization tools: pip install 'jetmoe-trt[ort]'")
    source, manifest = unrollable(export)
    if SCHEMES[scheme].kind == "dynamic" and manifest.dtype != "fp32":
        raise InputError(f"{source} is an {manifest.dtype} export: int8-dynamic needs fp32 activations (ONNX's "
                         "DynamicQuantizeLinear takes float32 only); use int8-weight-only, or export with --dtype fp32")
    out_dir = check_output(out_dir, kind="dir", overwrite=overwrite, inputs=[source.parent], marker=MANIFEST_NAME,
                           owned=owned_by("quantized"))
    spec = SCHEMES[scheme]
    weight_only = spec.kind == "weight-only"
    with atomic_directory(out_dir) as tmp:
        (tmp / "unrolled").mkdir()
        unrolled = write_unrolled(source, manifest, tmp / "unrolled")
        model = onnx.load(unrolled, load_external_data=False)
        marks = tuple(EXPERT_GROUPS[group] for group in experts)
        chosen = [n.name for n in model.graph.node if n.op_type == "MatMul" and "/expert" in n.name
                  and any(mark in n.input[1] for mark in marks)]
        others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in chosen]
        del model
        log.info("quantizing %d expert MatMuls (%s, %s)", len(chosen), scheme, "+".join(experts))
        with _quiet():
            if weight_only:
                _weight_only(unrolled, tmp / MODEL_NAME, others, spec.bits, block_size, accuracy_level, symmetric)
            else:
                _dynamic(unrolled, tmp / MODEL_NAME, chosen, symmetric)
        _one_data_file(tmp / MODEL_NAME)
        shutil.rmtree(unrolled.parent)
        onnx.checker.check_model(str(tmp / MODEL_NAME))
        quantization = Quantization(scheme=scheme, experts=list(experts), nodes=len(chosen),
                                    block_size=block_size if weight_only else None,
                                    accuracy_level=accuracy_level if weight_only else None, symmetric=symmetric)
        written = [MODEL_NAME, DATA_NAME, *copy_sidecars(source.parent, manifest, tmp)]
        derived_manifest(manifest, source.parent, tmp, written, quantization).write(tmp)
    return out_dir / MODEL_NAME


def _weight_only(source: Path, target: Path, excluded: list[str], bits: int, block_size: int, accuracy_level: int,
                 symmetric: bool) -> None:
    # MatMulNBitsQuantizer's nodes_to_include adds to op_types_to_quantize (it does not restrict it): exclude the
    # MatMuls that are not experts instead (kv_proj; attention's own MatMuls have no initializer B).
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits,
                                          accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(onnx.load(source), bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level, nodes_to_exclude=excluded, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)


def _dynamic(source: Path, target: Path, nodes: list[str], symmetric: bool) -> None:
    # quantize_dynamic rewrites every Gemm (the routers too) into MatMul + a transposed weight before quantizing;
    # the routers stay float because only the expert MatMuls are in nodes_to_quantize.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                     weight_type=QuantType.QInt8, per_channel=False, use_external_data_format=True,
                     extra_options={"MatMulConstBOnly": True, "WeightSymmetric": symmetric})


def _one_data_file(model_path: Path) -> None:
    """Every weight in model.onnx.data (ONNX Runtime's savers may name it after a UUID), readable as any file we
    write (they create it 0600)."""
    model = onnx.load(model_path, load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    if locations != {DATA_NAME}:
        full = onnx.load(model_path)
        for location in locations:
            (model_path.parent / location).unlink(missing_ok=True)
        onnx.save_model(full, model_path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_NAME, size_threshold=1024)
    umask = os.umask(0)
    os.umask(umask)
    for path in (model_path, model_path.with_name(DATA_NAME)):
        os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizers log every node at INFO through the root logger (matmul_nbits_quantizer configures
    it when imported): keep our progress lines the only ones."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
