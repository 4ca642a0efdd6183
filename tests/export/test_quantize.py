"""Integer experts for ONNX Runtime CPU: which nodes change, that routers stay float, that the result is an export
the runner generates with.

The agreement numbers at 8B widths are in docs/performance.md (benchmarks/bench_int8.py); on the tiny preset each
scheme is only checked to stay near the fp32 export.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.manifest import read_manifest
from export.onnx_runtime import OnnxrtRunner
from export.quantize import SCHEMES, quantize_export
from jetmoe.errors import ExportError, InputError
from jetmoe.generate import generate
from tests.conftest import prefill_feeds

# max |dlogit| / max |logit| against the fp32 export. Loose: the tiny random model amplifies rounding (measured
# 0.05 int8 weight-only, 0.36 int8 dynamic, 0.58 int4); these limits catch a broken graph, not accuracy (the
# unrolled graph is checked bit-exactly in test_unrolled.py).
LIMITS = {"int8-weight-only": 0.15, "int8-dynamic": 0.6, "int4-weight-only": 1.5}


def prefill(path, config, dtype="fp32") -> np.ndarray:
    feeds = prefill_feeds(config, [5, 17, 99, 3, 7, 250, 31, 8], np.float16 if dtype == "fp16" else np.float32)
    return ort.InferenceSession(str(path)).run(["logits"], feeds)[0].astype(np.float32)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_schemes_quantize_only_the_experts(exported, tiny_checkpoint, tmp_path, scheme):
    config = tiny_checkpoint[1].config
    source = exported()
    path = quantize_export(source.parent, tmp_path / scheme, scheme=scheme)
    model = onnx.load(path, load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    expert_matmuls = 4 * config.num_local_experts * config.num_hidden_layers
    assert ops["MatMulNBits" if "weight-only" in scheme else "MatMulInteger"] == expert_matmuls
    types = {t.name: t.data_type for t in model.graph.initializer}
    routers = [name for name in types if "router.layer.weight" in name]  # quantize_dynamic: Gemm -> MatMul + .T
    assert len(routers) == 2 * config.num_hidden_layers
    assert all(types[name] == onnx.TensorProto.FLOAT for name in routers)
    manifest = read_manifest(path)
    manifest.verify_files(path.parent, sha256=True)
    assert manifest.dispatch == "unrolled" and manifest.quantization.scheme == scheme
    assert manifest.quantization.nodes == expert_matmuls and manifest.quantization.experts == ["mlp", "attention"]
    assert "onnxruntime" in manifest.versions
    want, got = prefill(source, config), prefill(path, config)
    error = np.abs(got - want).max() / np.abs(want).max()
    print(f"{scheme}: max |dlogit| / max |logit| = {error:.3g}, top-1 agreement "
          f"{(got.argmax(-1) == want.argmax(-1)).mean():.2f}")
    assert error < LIMITS[scheme]


def test_mlp_experts_only(exported, tiny_checkpoint, tmp_path):
    config = tiny_checkpoint[1].config
    path = quantize_export(exported(), tmp_path / "mlp", experts=("mlp", "mlp"))  # a group named twice counts once
    model = onnx.load(path, load_external_data=False)
    quantized = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(quantized) == 2 * config.num_local_experts * config.num_hidden_layers
    assert all(".mlp." in n.input[1] for n in quantized)
    assert read_manifest(path).quantization.experts == ["mlp"]


def test_the_runner_generates_with_it(exported, tiny_checkpoint, tmp_path):
    path = quantize_export(exported(), tmp_path / "int8")
    with OnnxrtRunner(path.parent) as runner:
        assert runner.config == tiny_checkpoint[1].config.replace(dtype=runner.config.dtype)
        tokens = generate(runner, [[5, 17, 99], [7]], max_new_tokens=4)
    assert [len(t) for t in tokens] == [4, 4]
    print(f"int8: {tokens}, eager: {tiny_checkpoint[1].generate([[5, 17, 99], [7]], max_new_tokens=4)}")


def test_fp16_export(exported, tiny_checkpoint, tmp_path):
    config = tiny_checkpoint[1].config
    source = exported("fp16")
    path = quantize_export(source.parent, tmp_path / "int8-fp16")
    want, got = prefill(source, config, "fp16"), prefill(path, config, "fp16")
    assert np.abs(got - want).max() / np.abs(want).max() < LIMITS["int8-weight-only"]
    assert read_manifest(path).dtype == "fp16"


def test_refusals(exported, tmp_path):
    folder = exported().parent
    with pytest.raises(InputError, match="unknown quantization scheme 'int3'"):
        quantize_export(folder, tmp_path / "a", scheme="int3")
    with pytest.raises(InputError, match="block_size must be a power of two >= 16"):
        quantize_export(folder, tmp_path / "b", block_size=48)
    with pytest.raises(InputError, match=r"experts \['router'\]: choose among"):
        quantize_export(folder, tmp_path / "c", experts=("router",))
    with pytest.raises(ExportError, match="has the portable dispatch"):
        quantize_export(exported(dispatch="portable"), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []
