"""Exports shared by the export tests (each export traces the model: ~20 s, so they are made once)."""

from __future__ import annotations

import pytest

from export.exporter import export_checkpoint
from jetmoe import JetMoeForSequenceClassification
from tests.conftest import CONFIGS, make_model

pytest.importorskip("onnxruntime", reason="the export tests run the exported graphs in ONNX Runtime")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "ckpt"
    model = make_model(CONFIGS["tiny"], seed=21)
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="session")
def exported(tiny_checkpoint, tmp_path_factory):
    """dtype -> (model.onnx path) for the tiny checkpoint, exported on first use."""
    folder, _ = tiny_checkpoint
    cache = {}

    def get(dtype="fp32", validation_outputs=False):
        key = (dtype, validation_outputs)
        if key not in cache:
            out = tmp_path_factory.mktemp("onnx") / f"{dtype}-{validation_outputs}"
            cache[key] = export_checkpoint(folder, out, dtype=dtype, validation_outputs=validation_outputs,
                                           progress=False)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def classification_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls") / "ckpt"
    config = CONFIGS["odd"].replace(pad_token_id=0, num_labels=3)
    model = make_model(config, cls=JetMoeForSequenceClassification, seed=5)
    model.save_pretrained(folder)
    path = export_checkpoint(folder, folder.parent / "onnx", task="sequence-classification", progress=False)
    return path, model
