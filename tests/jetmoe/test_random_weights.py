"""Random checkpoints written tensor by tensor: the same values as `init_random_`, in HF's sharded layout."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors import safe_open

from jetmoe import InputError, JetMoeConfig, JetMoeForCausalLM, JetMoeForSequenceClassification, OutputError
from jetmoe.checkpoint import SAFETENSORS_INDEX_NAME, SAFETENSORS_NAME, SafetensorsWriter
from jetmoe.errors import InternalError
from jetmoe.random_weights import _informative, parameter_shapes, random_pieces, write_random_checkpoint
from tests.conftest import CONFIGS, make_model


@pytest.mark.parametrize("name", ["tiny", "odd", "k3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_checkpoint_equals_init_random(tmp_path, name, dtype):
    """Bit for bit what make_model (init_random_) gives, sharded or not, in any dtype."""
    config = CONFIGS[name]
    write_random_checkpoint(tmp_path / "ckpt", config, seed=7, dtype=str(dtype), max_shard_size=50_000)
    loaded = JetMoeForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=dtype)
    expected = make_model(config, seed=7, dtype=dtype)
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_sequence_classification_checkpoint(tmp_path):
    out = write_random_checkpoint(tmp_path / "cls", CONFIGS["odd"], seed=3, task="sequence-classification")
    loaded = JetMoeForSequenceClassification.from_pretrained(out)
    expected = make_model(CONFIGS["odd"].replace(pad_token_id=0), seed=3, cls=JetMoeForSequenceClassification)
    assert loaded.config.pad_token_id == 0
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("shape", [(3, 100_003), (5,), (17, 31), (16,), (31,), (2, 8, 5)])
def test_values_do_not_depend_on_chunking(shape):
    """Pieces of any multiple of 16 draw what one randn of the whole tensor draws (and the same scaling)."""
    whole = _informative("x.weight", torch.randn(shape, generator=torch.Generator().manual_seed(3)), 0.01).flatten()
    for chunk in (16, 16 * 97, 1 << 24):
        pieces = list(random_pieces(torch.Generator().manual_seed(3), "x.weight", shape, 0.01, torch.float32, chunk))
        assert torch.equal(torch.cat(pieces), whole), chunk
        assert all(p.numel() >= min(16, whole.numel()) for p in pieces)


def test_sharded_layout_like_the_real_download(tmp_path):
    config = CONFIGS["tiny"]
    tmp_path = write_random_checkpoint(tmp_path / "ckpt", config, seed=0, max_shard_size=400_000)
    index = json.loads((tmp_path / SAFETENSORS_INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert len(shards) > 2 and not (tmp_path / SAFETENSORS_NAME).exists()
    shapes = dict(parameter_shapes(config))
    assert set(index["weight_map"]) == set(shapes) and "lm_head.weight" not in shapes  # tied: stored once
    total = 0
    for shard in shards:  # the safetensors library's own reader accepts the files
        with safe_open(tmp_path / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                assert index["weight_map"][key] == shard and tuple(f.get_slice(key).get_shape()) == shapes[key]
                total += f.get_tensor(key).numel() * 4
    assert index["metadata"]["total_size"] == total
    raw = json.loads((tmp_path / "config.json").read_text())
    assert (raw["ffn_hidden_size"], raw["moe_num_experts"], raw["moe_top_k"]) == (96, 8, 2)
    assert raw["architectures"] == ["JetMoEForCausalLM"] and raw["torch_dtype"] == raw["dtype"] == "float32"
    assert JetMoeConfig.from_pretrained(tmp_path) == config.replace(dtype="float32")


def test_preset_dtype_is_the_default(tmp_path):
    small_8b = JetMoeConfig.from_preset("jetmoe-8b", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                        num_key_value_heads=2, kv_channels=8, intermediate_size=24)
    write_random_checkpoint(tmp_path / "a", small_8b)
    assert JetMoeConfig.from_pretrained(tmp_path / "a").dtype == "bfloat16"
    with safe_open(tmp_path / "a" / SAFETENSORS_NAME, "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
    write_random_checkpoint(tmp_path / "b", CONFIGS["tiny"])
    assert JetMoeConfig.from_pretrained(tmp_path / "b").dtype == "float32"


def test_transformers_reads_the_config_right(tmp_path, transformers):
    """HF ignores the original keys: the HF keys beside them keep non-8B widths right."""
    hf = transformers.JetMoeConfig.from_pretrained(write_random_checkpoint(tmp_path / "ckpt", CONFIGS["odd"]))
    assert (hf.intermediate_size, hf.num_local_experts, hf.hidden_size) == (80, 8, 96)


def test_a_crash_mid_write_leaves_nothing_and_keeps_the_old_folder(tmp_path, monkeypatch):
    out = write_random_checkpoint(tmp_path / "ckpt", CONFIGS["tiny"], seed=1)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", SAFETENSORS_NAME]
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        write_random_checkpoint(out, CONFIGS["tiny"])
    real, calls = SafetensorsWriter.write, []

    def disk_full(self, piece):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, piece)
    monkeypatch.setattr(SafetensorsWriter, "write", disk_full)
    for target in (tmp_path / "crashed", out):
        calls.clear()
        with pytest.raises(OutputError, match="could not write .*: no space left on the device"):
            write_random_checkpoint(target, CONFIGS["tiny"], seed=2, overwrite=True, max_shard_size=100_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no partial folder, no temp files
    assert torch.equal(JetMoeForCausalLM.from_pretrained(out).model.norm.weight,
                       make_model(CONFIGS["tiny"], seed=1).model.norm.weight)  # the old checkpoint survived


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="task 'translation' is not one of"):
        write_random_checkpoint(tmp_path / "a", CONFIGS["tiny"], task="translation")
    with pytest.raises(InputError, match="max_shard_size must be a positive number of bytes, got 0"):
        write_random_checkpoint(tmp_path / "a", CONFIGS["tiny"], max_shard_size=0)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_pieces_that_do_not_add_up(tmp_path):
    with pytest.raises(InternalError, match="tensor w and the ones after it were not written"):
        with SafetensorsWriter(tmp_path / "x.safetensors", [("w", torch.float32, (2, 3))]) as out:
            out.write(torch.zeros(4))
    with pytest.raises(InternalError, match="got 28 bytes of torch.float32 for tensor w"):
        with SafetensorsWriter(tmp_path / "y.safetensors", [("w", torch.float32, (2, 3))]) as out:
            out.write(torch.zeros(7))
    with pytest.raises(InternalError, match="torch.float16 for tensor w"):
        with SafetensorsWriter(tmp_path / "z.safetensors", [("w", torch.float32, (2, 3))]) as out:
            out.write(torch.zeros(6, dtype=torch.float16))
