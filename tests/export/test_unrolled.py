"""`unroll_experts`: the same numbers as the plugin-dispatch export, with every expert a MatMul on its own weight."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.lint import lint_model
from export.manifest import MANIFEST_NAME, read_manifest
from export.unrolled import unroll_experts
from jetmoe.errors import ExportError, OutputError

CASES = [("fp32", False), ("fp16", False), ("fp32", True)]


def feeds(config, dtype: str) -> dict[str, np.ndarray]:
    floating = np.float16 if dtype == "fp16" else np.float32
    out = {"input_ids": np.array([[5, 17, 99, 3, 7], [2, 2, 11, 12, 13]]),
           "attention_mask": np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]),
           "position_ids": np.array([[0, 1, 2, 3, 4], [1, 1, 0, 1, 2]])}
    for i in range(config.num_hidden_layers):
        for kv in ("key", "value"):
            out[f"past_key_values.{i}.{kv}"] = np.zeros((2, config.num_key_value_heads, 0, config.kv_channels),
                                                        floating)
    return out


@pytest.mark.parametrize("dtype,validation_outputs", CASES)
def test_same_outputs_as_the_export_s_functions(exported, tiny_checkpoint, tmp_path, dtype, validation_outputs):
    config = tiny_checkpoint[1].config
    source = exported(dtype, validation_outputs)
    path = unroll_experts(source.parent, tmp_path / "unrolled")
    inputs = feeds(config, dtype)
    want = ort.InferenceSession(str(source)).run(None, inputs)  # model.onnx: ORT inlines the local functions
    got = ort.InferenceSession(str(path)).run(None, inputs)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(b, a)


def test_experts_are_matmuls_on_their_own_weights(exported, tiny_checkpoint, tmp_path):
    config = tiny_checkpoint[1].config
    model = onnx.load(unroll_experts(exported(), tmp_path / "unrolled"), load_external_data=False)
    assert not any(n.domain == "jetmoe" for n in model.graph.node) and not model.functions
    assert "jetmoe" not in {o.domain for o in model.opset_import}
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    experts = [n for n in model.graph.node if n.op_type == "MatMul" and "/expert" in n.name]
    assert len(experts) == 4 * config.num_local_experts * config.num_hidden_layers
    D, I = config.hidden_size, config.intermediate_size
    assert inits["model.layers.0.mlp.input_linear.weight/expert3.T"] == [D, 2 * I]
    assert inits["model.layers.0.mlp.output_linear.weight/expert3.T"] == [I, D]
    assert not any(name.endswith(("input_linear.weight", "output_linear.weight")) for name in inits)  # no stacks
    routers = [n for n in model.graph.node if any(i.endswith("router.layer.weight") for i in n.input)]
    assert len(routers) == 2 * config.num_hidden_layers and all(n.op_type == "Gemm" for n in routers)
    assert {p.key: p.value for p in model.metadata_props}["jetmoe.dispatch"] == "unrolled"


def test_weights_are_copied_bit_exactly(exported, tmp_path):
    source = exported()
    path = unroll_experts(source.parent, tmp_path / "unrolled")
    stacked = {t.name: onnx.numpy_helper.to_array(t, base_dir=str(source.parent))
               for t in onnx.load(source, load_external_data=False).graph.initializer if "linear.weight" in t.name}
    unrolled = {t.name: onnx.numpy_helper.to_array(t, base_dir=str(path.parent))
                for t in onnx.load(path, load_external_data=False).graph.initializer}
    for name, weights in stacked.items():
        for e in range(weights.shape[0]):
            np.testing.assert_array_equal(unrolled[f"{name}/expert{e}.T"], weights[e].T)


def test_the_copy_is_an_export_for_onnx_runtime_only(exported, tmp_path):
    source = exported().parent
    path = unroll_experts(source, tmp_path / "unrolled")
    manifest = read_manifest(path)
    manifest.verify_files(path.parent, sha256=True)
    assert manifest.dispatch == "unrolled" and manifest.source == str(source.resolve())
    assert manifest.custom_ops == [] and manifest.quantization is None
    assert set(manifest.files) == set(read_manifest(source).files) - {"model.ort.onnx"}  # the sidecars too
    report = lint_model(onnx.load(path, load_external_data=False), manifest.dispatch, 2)
    assert not report and "ONNX Runtime-only copy" in str(report)
    alone = lint_model(onnx.load(path, load_external_data=False))  # without export.json: its metadata says it
    assert "ONNX Runtime-only copy" in str(alone)


def test_refusals(exported, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        unroll_experts(exported(), tmp_path / "out")
    with pytest.raises(OutputError, match="holds files but no export.json"):
        unroll_experts(exported(), tmp_path / "out", overwrite=True)
    unrolled = unroll_experts(exported(), tmp_path / "once")
    assert unroll_experts(exported(), tmp_path / "once", overwrite=True) == unrolled  # its own output: replaced
    with pytest.raises(ExportError, match="has the unrolled dispatch: only a plugin-dispatch export"):
        unroll_experts(unrolled, tmp_path / "twice")
    with pytest.raises(ExportError, match="has the portable dispatch"):
        unroll_experts(exported(dispatch="portable"), tmp_path / "portable")
    with pytest.raises(ExportError, match="is a bf16 export"):
        unroll_experts(exported("bf16"), tmp_path / "bf16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["once", "out"]
    assert (tmp_path / "once" / MANIFEST_NAME).is_file() and (tmp_path / "out" / "mine.txt").read_text() == "keep"
