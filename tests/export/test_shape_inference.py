"""ORT's symbolic shape inference through the exported graphs: the stock tool stops, ours gives every size."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from export.manifest import DATA_NAME, MODEL_NAME
from export.shape_inference import TOTAL, infer_symbolic_shapes, main
from tests.conftest import prefill_feeds


def shapes(model: onnx.ModelProto) -> dict[str, list]:
    values = [*model.graph.value_info, *model.graph.output]
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def fresh(dims: list) -> bool:
    """A symbol the tool made up (unk__3, expert_map_35_o0__d2): the size was lost."""
    return any(isinstance(d, str) and ("unk__" in d or "_o0__d" in d) for d in dims)


def test_the_stock_tool_stops_without_auto_merge(exported, tmp_path, monkeypatch):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    monkeypatch.chdir(tmp_path)  # on failure the tool saves sym_shape_infer_temp.onnx in the working directory
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        SymbolicShapeInference.infer_shapes(onnx.load(exported()), auto_merge=False)


def test_the_stock_tool_with_auto_merge_stops_at_expert_map_once_the_schema_is_registered(exported, tmp_path,
                                                                                          monkeypatch):
    """With the `jetmoe` OpSchema registered (any process that exported), onnx infers the node's type but no
    shape, and the stock tool stops at the first expert_map even with --auto_merge. (In a fresh process it
    completes, with made-up sizes for every jetmoe output.)"""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from export import schema

    schema.register_schemas()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        SymbolicShapeInference.infer_shapes(onnx.load(exported()), auto_merge=True)


@pytest.mark.parametrize("dtype,validation_outputs", [("fp32", False), ("fp16", False), ("fp32", True)])
def test_every_size_is_exact(exported, tiny_checkpoint, dtype, validation_outputs):
    config = tiny_checkpoint[1].config
    model = infer_symbolic_shapes(onnx.load(exported(dtype, validation_outputs), load_external_data=False))
    inferred = shapes(model)
    outputs = [o for n in model.graph.node for o in n.output if o]
    assert [o for o in outputs if o not in inferred] == []
    assert [o for o in outputs if fresh(inferred[o])] == []
    widths = {"self_attention": config.num_key_value_heads * config.kv_channels, "mlp": 2 * config.intermediate_size}
    for node in (n for n in model.graph.node if n.domain == "jetmoe"):
        if node.op_type == "expert_map":
            width = widths["mlp" if ".mlp." in node.input[2] else "self_attention"]
            expected = ["batch*seq", config.num_experts_per_tok, width]  # y [T, K, N]
        else:
            expected = ["batch*seq", config.hidden_size]  # y [T, D]
        assert inferred[node.output[0]] == expected, node.name
    assert inferred["logits"] == ["batch", "seq", config.vocab_size]
    assert inferred["present.0.key"] == ["batch", config.num_key_value_heads, TOTAL, config.kv_channels]
    mask = next(v for v in model.graph.input if v.name == "attention_mask")
    assert mask.type.tensor_type.shape.dim[1].dim_param == TOTAL


def test_the_command_keeps_the_weights_external_and_the_result_runs(exported, tiny_checkpoint, tmp_path, capsys):
    import onnxruntime as ort

    source = exported()
    folder = tmp_path / "export"
    folder.mkdir()
    for name in (MODEL_NAME, DATA_NAME):  # copies: ONNX Runtime refuses data behind a symlink out of the folder
        shutil.copyfile(source.with_name(name), folder / name)
    assert main([str(folder / MODEL_NAME), str(folder / "model.shapes.onnx")]) == 0
    assert capsys.readouterr().out.strip() == str(folder / "model.shapes.onnx")
    model = onnx.load(folder / "model.shapes.onnx", load_external_data=False)
    weights = [t for t in model.graph.initializer if t.name.startswith(("model.", "lm_head."))]
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)
    config = tiny_checkpoint[1].config
    feeds = prefill_feeds(config, [3, 4, 5])
    want = ort.InferenceSession(str(source)).run(["logits"], feeds)[0]
    got = ort.InferenceSession(str(folder / "model.shapes.onnx")).run(["logits"], feeds)[0]
    np.testing.assert_array_equal(got, want)
    assert main([str(folder / MODEL_NAME), str(folder / "model.shapes.onnx")]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([str(folder / MODEL_NAME), str(tmp_path / "elsewhere.onnx")]) == 1
    assert "beside" in capsys.readouterr().err and not (tmp_path / "elsewhere.onnx").exists()


def test_sequence_classification(classification_export):
    path, eager = classification_export
    inferred = shapes(infer_symbolic_shapes(onnx.load(path, load_external_data=False)))
    assert inferred["logits"] == ["batch", eager.config.num_labels]
    assert not [name for name, dims in inferred.items() if fresh(dims)]


def test_where_it_cannot_complete_it_names_the_node(exported, tmp_path, capsys):
    """A quantized copy makes the stock tool assert (a Gather it does not handle), a missing input is named
    first: one line each, nothing written."""
    from export.quantize import quantize_export

    quantized = quantize_export(exported().parent, tmp_path / "int8")
    assert main([str(quantized), str(quantized.with_name("s.onnx"))]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "symbolic shape inference failed at node '" in line
    assert not quantized.with_name("s.onnx").exists()
    assert main([str(tmp_path / "missing.onnx"), str(quantized.with_name("s.onnx"))]) == 1
    assert f"no ONNX model at {tmp_path / 'missing.onnx'}" in capsys.readouterr().err
