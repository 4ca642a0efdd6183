"""Weights stored once, all external, under their checkpoint names: on real exports (tiny in every dtype and both
dispatches, an odd config, an untied head), and on each way to break it."""

from __future__ import annotations

import shutil

import onnx
import pytest

from export.exporter import DATA_NAME, MANIFEST_NAME, MODEL_NAME, export_checkpoint
from export.weights_check import ALIGN, weights_report
from jetmoe import ExportError
from tests import known_bugs
from tests.conftest import CONFIGS, make_model


@pytest.fixture(scope="module")
def odd_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    make_model(CONFIGS["odd"], seed=4).save_pretrained(folder / "ckpt")
    export_checkpoint(folder / "ckpt", folder / "onnx", dtype="fp16")
    return folder / "onnx", folder / "ckpt"


@pytest.mark.parametrize("dtype, dispatch", [("fp32", "plugin"), ("fp16", "plugin"), ("bf16", "plugin"),
                                             ("fp32", "portable")])
def test_tiny_export_stores_every_weight_once_under_its_name(exported, tiny_checkpoint, dtype, dispatch):
    report = weights_report(exported(dtype, dispatch=dispatch).parent, tiny_checkpoint[0])
    print(report)
    assert report, str(report)
    externals = sum(t.data_location == onnx.TensorProto.EXTERNAL
                    for t in onnx.load(exported(dtype, dispatch=dispatch), load_external_data=False).graph.initializer)
    assert report.data_bytes - report.referenced_bytes < ALIGN * externals  # the rest: page-alignment padding


def test_odd_export_stores_every_weight_once_under_its_name(odd_export):
    report = weights_report(*odd_export)
    print(report)
    assert report, str(report)


def test_model_file_holds_no_weights(exported):
    model = exported()
    assert model.stat().st_size < 64 * 1024  # tiny preset: the graph and the function bodies
    names = {t.name for t in onnx.load(model, load_external_data=False).graph.initializer}
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names  # tied: the checkpoint's name
    assert "model.layers.0.self_attention.kv_proj.weight" in names


def test_catches_the_optimizer_folding_weights(tiny_checkpoint, tmp_path, monkeypatch):
    known_bugs.weights_folded_by_the_optimizer(monkeypatch)
    with pytest.raises(ExportError, match=r"(?s)not store each weight once.*inline \(2\): val_"):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "refused")  # the exporter's own check
    assert not (tmp_path / "refused").exists()
    monkeypatch.setattr("export.exporter.check_weights", lambda *args, **kwargs: True)
    export_checkpoint(tiny_checkpoint[0], tmp_path / "out")
    report = weights_report(tmp_path / "out", tiny_checkpoint[0])
    print(report)
    assert not report
    layers = CONFIGS["tiny"].num_hidden_layers
    kv = [f"model.layers.{i}.self_attention.kv_proj.weight" for i in range(layers)]
    assert len(report.inline) == layers and all(size == 64 * 128 * 4 for _, size in report.inline)
    assert report.missing == kv  # the checkpoint name is gone ...
    assert [name for name, _ in report.renamed] == kv  # ... its values live on inline, transposed ...
    assert all(where.startswith("inline val_") and where.endswith("(transposed)") for _, where in report.renamed)
    assert [name for name, _ in report.duplicated] == kv  # ... and its original bytes are dead
    assert [holder.split(" at ")[0] for _, _, holder in report.unreferenced] == kv


def test_catches_dead_bytes_renames_and_wrong_values(exported, tiny_checkpoint, tmp_path):
    source = exported().parent
    folder = tmp_path / "damaged"
    folder.mkdir()
    shutil.copy(source / MANIFEST_NAME, folder)
    proto = onnx.load(source / MODEL_NAME, load_external_data=False)
    data = bytearray((source / DATA_NAME).read_bytes())
    norm = next(t for t in proto.graph.initializer if t.name == "model.norm.weight")
    norm.name = "final_norm"  # renamed (the graph's uses are not renamed: only the report reads this file)
    router = next(t for t in proto.graph.initializer if t.name.endswith("layers.1.mlp.router.layer.weight"))
    offset = int(next(e.value for e in router.external_data if e.key == "offset"))
    data[offset] ^= 0xFF  # one wrong byte
    data += b"\1" * 8192  # dead bytes at the end
    onnx.save(proto, folder / MODEL_NAME)
    (folder / DATA_NAME).write_bytes(bytes(data))
    report = weights_report(folder, tiny_checkpoint[0])
    print(report)
    assert report.missing == ["model.norm.weight"] and report.unexpected == ["final_norm"]
    assert report.renamed == [("model.norm.weight", "final_norm")]
    assert report.mismatched == ["model.layers.1.mlp.router.layer.weight"]
    assert [end for _, end, _ in report.unreferenced] == [len(data)]
    names_only = weights_report(folder, tiny_checkpoint[0], values=False)
    assert not names_only.renamed and not names_only.mismatched and names_only.missing == ["model.norm.weight"]


def test_inline_bytes_count_each_element_at_its_size():
    """Typed fields (int64_data, double_data, ...) hold 8-byte values: an inline constant is not undercounted."""
    import numpy as np
    from onnx import helper, numpy_helper

    from export.weights_check import _stored_bytes

    typed = helper.make_tensor("c", onnx.TensorProto.INT64, [200], list(range(200)))  # int64_data, no raw_data
    assert not typed.HasField("raw_data") and _stored_bytes(typed) == 1600
    assert _stored_bytes(numpy_helper.from_array(np.zeros(7, np.float16))) == 14
