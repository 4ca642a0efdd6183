"""JetMoeConfig: the seed's defaults, derived values, validation, config.json in both key dialects."""

from __future__ import annotations

import json

import pytest

from jetmoe import ConfigError, JetMoeConfig

SEED_DEFAULTS = dict(
    vocab_size=32000, hidden_size=2048, num_hidden_layers=12, num_key_value_heads=16, kv_channels=128,
    intermediate_size=5632, max_position_embeddings=4096, activation_function="silu", num_local_experts=8,
    num_experts_per_tok=2, output_router_logits=False, aux_loss_coef=0.01, use_cache=True, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6, initializer_range=0.01,
    attention_dropout=0.0, pad_token_id=None, num_labels=2,
)

# A jetmoe-8b style config.json: original JetMoE keys, as the real checkpoints ship them.
ORIGINAL_8B = {
    "architectures": ["JetMoEForCausalLM"], "model_type": "jetmoe", "vocab_size": 32000, "hidden_size": 2048,
    "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 16, "kv_channels": 128,
    "ffn_hidden_size": 5632, "moe_num_experts": 8, "moe_top_k": 2, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "activation_function": "silu", "glu": True, "rotary_percent": 1.0, "bias": True,
    "rope_theta": 10000.0, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}


def test_defaults_are_the_seed_documentation():
    config = JetMoeConfig()
    for name, value in SEED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.num_attention_heads == 32


def test_presets():
    assert JetMoeConfig.from_preset("default") == JetMoeConfig()
    big = JetMoeConfig.from_preset("jetmoe-8b")
    assert (big.num_hidden_layers, big.rms_norm_eps, big.num_attention_heads) == (24, 1e-5, 32)
    assert JetMoeConfig.from_preset("tiny", vocab_size=300).vocab_size == 300
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        JetMoeConfig.from_preset("huge")


def test_original_jetmoe_keys_are_read():
    config = JetMoeConfig.from_dict(ORIGINAL_8B)
    assert config == JetMoeConfig.from_preset("jetmoe-8b")


@pytest.mark.parametrize("alias, name, value", [
    ("ffn_hidden_size", "intermediate_size", 4096), ("moe_num_experts", "num_local_experts", 16),
    ("moe_top_k", "num_experts_per_tok", 1),
])
def test_contradictory_duplicates_are_refused(alias, name, value):
    raw = {**ORIGINAL_8B, name: getattr(JetMoeConfig(), name), alias: value}
    with pytest.raises(ConfigError, match=rf"{name}=\d+ but {alias}={value}"):
        JetMoeConfig.from_dict(raw)


def test_agreeing_duplicates_are_fine():
    assert JetMoeConfig.from_dict({**ORIGINAL_8B, "intermediate_size": 5632}).intermediate_size == 5632


@pytest.mark.parametrize("changes, message", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok=9 exceeds num_local_experts=8"),
    (dict(hidden_size=0), "hidden_size must be a positive integer, got 0"),
    (dict(num_hidden_layers=-2), "num_hidden_layers must be a positive integer, got -2"),
    (dict(vocab_size=12.5), "vocab_size must be a positive integer, got 12.5"),
    (dict(activation_function="tanh"), "activation_function 'tanh' is not one of"),
    (dict(kv_channels=15), "kv_channels must be even"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps must be a positive finite number, got 0.0"),
    (dict(eos_token_id=32000), r"eos_token_id=32000 is not a token id in \[0, vocab_size=32000\)"),
    (dict(attention_dropout=1.5), r"attention_dropout must be in \[0, 1\), got 1.5"),
    (dict(problem_type="ranking"), "problem_type 'ranking'"),
])
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        JetMoeConfig(**changes)


@pytest.mark.parametrize("changes, message", [
    ({"num_attention_heads": 16}, "num_attention_heads=16 contradicts"),
    ({"glu": False}, "glu=False"),
    ({"rotary_percent": 0.5}, "rotary_percent=0.5"),
    ({"model_type": "llama"}, "model_type 'llama'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_type 'yarn'"),
])
def test_config_json_that_is_not_jetmoe_is_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        JetMoeConfig.from_dict({**ORIGINAL_8B, **changes})


def test_json_round_trip(tmp_path):
    config = JetMoeConfig.from_preset("tiny", num_labels=3, pad_token_id=0, rope_theta=500.0, eos_token_id=[2, 3])
    (tmp_path / "config.json").write_text(config.to_json_string())
    assert JetMoeConfig.from_pretrained(tmp_path) == config
    raw = json.loads(config.to_json_string())
    assert raw["rope_parameters"] == {"rope_theta": 500.0, "rope_type": "default"}
    assert raw["num_attention_heads"] == 8


def test_both_key_dialects_round_trip():
    """to_original_dict: the real jetmoe-8b file's keys beside the HF ones, agreeing, read back unchanged."""
    big = JetMoeConfig.from_preset("jetmoe-8b")
    raw = big.to_original_dict()
    assert {key: raw[key] for key in ORIGINAL_8B if key != "architectures"} == {
        key: value for key, value in ORIGINAL_8B.items() if key != "architectures"}
    assert JetMoeConfig.from_dict(raw) == big
    odd = JetMoeConfig.from_preset("tiny", intermediate_size=80, num_experts_per_tok=3)
    assert JetMoeConfig.from_dict(odd.to_original_dict()) == odd
    assert "torch_dtype" not in odd.to_original_dict()  # no dtype, no alias of it


def test_hf_reads_our_config_and_we_read_hf_s(tmp_path, transformers):
    ours = JetMoeConfig.from_preset("tiny", rope_theta=2000.0, num_labels=4)
    (tmp_path / "config.json").write_text(ours.to_json_string())
    hf = transformers.JetMoeConfig.from_pretrained(tmp_path)
    assert (hf.rope_parameters["rope_theta"], hf.intermediate_size, hf.num_labels) == (2000.0, 96, 4)
    hf.save_pretrained(tmp_path / "hf")
    assert JetMoeConfig.from_pretrained(tmp_path / "hf") == ours


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no config file at"):
        JetMoeConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        JetMoeConfig.from_pretrained(tmp_path)
