"""The ONNX Runtime runner refuses what eager refuses, and a damaged or lying export folder is one clear error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.manifest import read_manifest
from export.onnx_runtime import OnnxrtRunner
from jetmoe import ExportError, InputError, Unavailable
from jetmoe.generate import generate


@pytest.fixture
def folder(exported, tmp_path):
    """A private copy of the tiny fp32 export (tests tamper with it)."""
    dst = tmp_path / "export"
    shutil.copytree(exported().parent, dst)
    return dst


def test_bad_token_ids_and_lengths_through_onnx_runtime(exported):
    with OnnxrtRunner(exported()) as runner:
        vocab, limit = runner.config.vocab_size, runner.config.max_position_embeddings
        for prompt, message in (([1, -3, 2], "token id -3 is outside"), ([1, vocab], f"token id {vocab} is outside")):
            with pytest.raises(InputError, match=message):
                generate(runner, [prompt], max_new_tokens=2)
        with pytest.raises(InputError, match=f"exceeds max_position_embeddings={limit}; lower max_new_tokens"):
            generate(runner, [[1] * (limit - 2)], max_new_tokens=4)


def test_a_short_decode_mask_is_refused_by_the_runner_and_by_the_graph(exported):
    """A [2, 1] decode mask would broadcast and un-mask the left padding: the runner refuses it, and so does the
    graph itself for callers that feed ONNX Runtime directly."""
    path = exported()
    with OnnxrtRunner(path) as runner:
        ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
        mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
        prefill = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
                   **runner.empty_past(2)}
        past = runner.carry_past(runner.infer(prefill))
        step = {"input_ids": torch.tensor([[3], [4]]), "position_ids": torch.tensor([[2], [4]]), **past}
        with pytest.raises(InputError, match=r"attention_mask must be \[batch=2, cached\+new=5\], got \(2, 1\)"):
            runner.infer({**step, "attention_mask": torch.ones(2, 1, dtype=torch.long)})
        raw = {k: v.numpy() for k, v in step.items()}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="attention_mask|Concat|shape|dimension|Reshape") as e:
        session.run(["logits"], {**raw, "attention_mask": np.ones((2, 1), np.int64)})
    assert "INVALID_ARGUMENT" in str(e.value) or "RUNTIME_EXCEPTION" in str(e.value) or "Non-zero" in str(e.value)
    session.run(["logits"], {**raw, "attention_mask": np.ones((2, 5), np.int64)})  # the right shape still runs


def test_missing_or_truncated_weights(folder):
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(ExportError, match="model.onnx.data has .* bytes, export.json records .*truncated"):
        OnnxrtRunner(folder).activate()
    data.unlink()
    with pytest.raises(ExportError, match="model.onnx.data is missing: model.onnx and model.onnx.data must stay"):
        OnnxrtRunner(folder / "model.onnx").activate()


def test_a_manifest_edited_to_lie(folder):
    path = folder / "export.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "config": {**raw["config"], "num_hidden_layers": 3}}))
    with pytest.raises(ExportError, match="config .*3 layers.* means .*edited or damaged"):
        OnnxrtRunner(folder).activate()
    path.write_text(json.dumps({**raw, "dtype": "fp16"}))
    with pytest.raises(ExportError, match="export.json says fp16 but .* cache inputs are tensor\\(float\\)"):
        OnnxrtRunner(folder).activate()
    path.write_text(json.dumps({**raw, "format_version": 1}))
    with pytest.raises(ExportError, match="format version 1; .*export again"):
        read_manifest(folder)
    path.write_text("{not json")
    with pytest.raises(ExportError, match="export.json is not valid JSON"):
        read_manifest(folder)


def test_fields_added_later_are_optional_and_checked(folder):
    path = folder / "export.json"
    raw = json.loads(path.read_text())
    assert raw["source"] is None and raw["quantization"] is None  # written by every export
    older = {k: v for k, v in raw.items() if k not in ("source", "quantization")}
    path.write_text(json.dumps(older))
    assert read_manifest(folder).quantization is None  # an export.json from before them still reads
    path.write_text(json.dumps({**raw, "dispatch": "sparse"}))
    with pytest.raises(ExportError, match="unknown dispatch 'sparse'"):
        read_manifest(folder)
    path.write_text(json.dumps({**raw, "quantization": {"scheme": "int8-weight-only"}}))
    with pytest.raises(ExportError, match="is damaged"):
        read_manifest(folder)


def test_a_folder_where_model_onnx_is_expected(folder, tmp_path):
    with OnnxrtRunner(folder) as runner:  # the export folder is as good as its model.onnx
        assert runner.path == folder / "model.onnx"
    with pytest.raises(ExportError, match="is a folder without model.onnx"):
        OnnxrtRunner(tmp_path)


def test_bf16_is_refused_with_the_reason(exported):
    with pytest.raises(Unavailable, match="bf16 export, and ONNX Runtime has no bf16 kernels"):
        OnnxrtRunner(exported("bf16")).activate()


def test_bad_arguments():
    with pytest.raises(InputError, match="provider 'tpu' is not one of"):
        OnnxrtRunner("x.onnx", provider="tpu")
    with pytest.raises(InputError, match="threads must be a positive integer, got -1"):
        OnnxrtRunner("x.onnx", threads=-1)
