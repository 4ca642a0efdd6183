"""Shared fixtures: a registry of small JetMoe configs and random models whose weights exercise every part."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.exporter import export_checkpoint
from jetmoe import JetMoeConfig, JetMoeForCausalLM, JetMoeForSequenceClassification
from jetmoe.random_weights import init_random_

# name -> config overrides. Odd and prime sizes on purpose; k = 1 and k = 3 as well as JetMoe's k = 2.
CONFIGS = {
    "tiny": JetMoeConfig.from_preset("tiny"),
    "odd": JetMoeConfig(vocab_size=211, hidden_size=96, num_hidden_layers=2, num_key_value_heads=3, kv_channels=16,
                        intermediate_size=80, max_position_embeddings=128),
    "k1": JetMoeConfig(vocab_size=97, hidden_size=40, num_hidden_layers=1, num_key_value_heads=2, kv_channels=10,
                       intermediate_size=24, num_local_experts=4, num_experts_per_tok=1, max_position_embeddings=64),
    "k3": JetMoeConfig(vocab_size=128, hidden_size=48, num_hidden_layers=3, num_key_value_heads=2, kv_channels=8,
                       intermediate_size=36, num_local_experts=5, num_experts_per_tok=3, max_position_embeddings=64,
                       rms_norm_eps=1e-5, rope_theta=500.0),
}


def make_model(config: JetMoeConfig, seed: int = 0, cls=JetMoeForCausalLM, dtype=torch.float32):
    torch.manual_seed(seed)
    model = cls(config)
    init_random_(model, seed)
    return model.to(dtype).eval()


def prefill_feeds(config: JetMoeConfig, ids: list[int], dtype=np.float32) -> dict[str, np.ndarray]:
    """Raw ONNX feeds of one unpadded prompt from an empty cache (past_key_values [1, H_kv, 0, Dh] in `dtype`), for
    tests that call an ONNX Runtime session directly."""
    feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids))[None]}
    for i in range(config.num_hidden_layers):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, config.num_key_value_heads, 0, config.kv_channels), dtype)
    return feeds


@pytest.fixture(params=sorted(CONFIGS))
def config(request) -> JetMoeConfig:
    return CONFIGS[request.param]


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers", reason="HF transformers is the oracle: pip install 'jetmoe-trt[test]'")


# ---- exports shared across test modules (each export traces the model: ~20 s, so each is made once) ----


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "ckpt"
    # rms_norm_eps 1e-5 as in jetmoe-8b: only the final norm may use it, so a block-norm eps bug shows
    model = make_model(CONFIGS["tiny"].replace(rms_norm_eps=1e-5), seed=21)
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="session")
def exported(tiny_checkpoint, tmp_path_factory):
    """(dtype, validation_outputs, dispatch) -> model.onnx path for the tiny checkpoint, exported on first use."""
    folder, _ = tiny_checkpoint
    cache = {}

    def get(dtype="fp32", validation_outputs=False, dispatch="plugin"):
        key = (dtype, validation_outputs, dispatch)
        if key not in cache:
            out = tmp_path_factory.mktemp("onnx") / f"{dtype}-{validation_outputs}-{dispatch}"
            cache[key] = export_checkpoint(folder, out, dtype=dtype, validation_outputs=validation_outputs,
                                           dispatch=dispatch)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def classification_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls") / "ckpt"
    config = CONFIGS["odd"].replace(pad_token_id=0, num_labels=3)
    model = make_model(config, cls=JetMoeForSequenceClassification, seed=5)
    model.save_pretrained(folder)
    path = export_checkpoint(folder, folder.parent / "onnx", task="sequence-classification")
    return path, model


@pytest.fixture(autouse=True)
def _package_loggers_as_a_library_leaves_them():
    """`jetmoe.cli.main` configures the package loggers (its own handler, no propagation); a later test's caplog
    must see them as a library user's process would."""
    yield
    import logging

    from jetmoe.log import ROOTS

    for name in ROOTS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
