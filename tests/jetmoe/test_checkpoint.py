"""HF-format checkpoint folders: round trips, shards, .bin, dtype, and every way a folder can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from jetmoe import (
    CheckpointError,
    ConfigError,
    JetMoeConfig,
    JetMoeForCausalLM,
    JetMoeForSequenceClassification,
)
from jetmoe.checkpoint import SAFETENSORS_INDEX_NAME, SAFETENSORS_NAME, plan_shards, shard_file_names
from tests.conftest import CONFIGS, make_model

CONFIG = CONFIGS["odd"]


@pytest.fixture
def saved(tmp_path):
    model = make_model(CONFIG)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_with_tied_embeddings(saved):
    model, folder = saved
    stored = load_file(folder / SAFETENSORS_NAME)
    assert "lm_head.weight" not in stored and "model.embed_tokens.weight" in stored
    assert "model.layers.0.self_attention.experts.router.layer.weight" in stored  # HF names, unchanged
    loaded = JetMoeForCausalLM.from_pretrained(folder)
    assert same_weights(model, loaded)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["JetMoeForCausalLM"]


def test_untied_checkpoint_keeps_lm_head(tmp_path):
    model = make_model(CONFIG.replace(tie_word_embeddings=False))
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" in load_file(tmp_path / SAFETENSORS_NAME)
    loaded = JetMoeForCausalLM.from_pretrained(tmp_path)
    assert same_weights(model, loaded) and loaded.lm_head.weight is not loaded.model.embed_tokens.weight


def test_sharded_round_trip_and_stale_files_removed(saved):
    model, folder = saved
    model.save_pretrained(folder, max_shard_size=100_000)
    index = json.loads((folder / SAFETENSORS_INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / SAFETENSORS_NAME).exists()
    assert same_weights(model, JetMoeForCausalLM.from_pretrained(folder))
    model.save_pretrained(folder)  # back to one file: the shards and index must go
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SAFETENSORS_NAME]


def test_pickled_bin_checkpoint_loads_weights_only(saved, tmp_path_factory):
    model, folder = saved
    bin_folder = tmp_path_factory.mktemp("bin")
    (bin_folder / "config.json").write_text((folder / "config.json").read_text())
    torch.save(load_file(folder / SAFETENSORS_NAME), bin_folder / "pytorch_model.bin")
    assert same_weights(model, JetMoeForCausalLM.from_pretrained(bin_folder))
    torch.save({"weights": load_file(folder / SAFETENSORS_NAME), "code": print}, bin_folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a loadable weights-only PyTorch checkpoint"):
        JetMoeForCausalLM.from_pretrained(bin_folder)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "float16", "bf16"])
def test_load_in_another_dtype(saved, dtype):
    model, folder = saved
    loaded = JetMoeForCausalLM.from_pretrained(folder, dtype=dtype)
    assert loaded.dtype in (torch.bfloat16, torch.float16)
    assert all(p.dtype == loaded.dtype for p in loaded.parameters())


def test_default_dtype_is_the_saved_one(tmp_path):
    make_model(CONFIG).to(torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert JetMoeForCausalLM.from_pretrained(tmp_path).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype 'int8' is not one of fp32, fp16, bf16"):
        JetMoeForCausalLM.from_pretrained(tmp_path, dtype="int8")


def test_classification_checkpoint(tmp_path):
    config = CONFIG.replace(num_labels=5, pad_token_id=0)
    model = make_model(config, cls=JetMoeForSequenceClassification)
    model.save_pretrained(tmp_path)
    loaded = JetMoeForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.num_labels == 5 and same_weights(model, loaded)


def rewrite(folder, change):
    tensors = load_file(folder / SAFETENSORS_NAME)
    change(tensors)
    save_file(tensors, folder / SAFETENSORS_NAME, metadata={"format": "pt"})


def test_missing_key_is_named(saved):
    _, folder = saved
    rewrite(folder, lambda t: t.pop("model.layers.1.mlp.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): model.layers.1.mlp.bias"):
        JetMoeForCausalLM.from_pretrained(folder)


def test_extra_key_is_named(saved):
    _, folder = saved
    rewrite(folder, lambda t: t.update({"model.layers.9.mlp.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): model.layers.9.mlp.bias"):
        JetMoeForCausalLM.from_pretrained(folder)


def test_wrong_shape_is_named_with_both_shapes(saved):
    _, folder = saved
    rewrite(folder, lambda t: t.update({"model.layers.0.mlp.input_linear.weight": torch.zeros(8, 80, 96)}))
    with pytest.raises(CheckpointError,
                       match=r"model.layers.0.mlp.input_linear.weight: expected \[8, 160, 96\], found \[8, 80, 96\]"):
        JetMoeForCausalLM.from_pretrained(folder)


def test_config_from_another_model_is_caught(saved):
    _, folder = saved
    (folder / "config.json").write_text(CONFIG.replace(num_hidden_layers=3).to_json_string())
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): model.layers.2"):
        JetMoeForCausalLM.from_pretrained(folder)


def test_truncated_safetensors_file(saved):
    _, folder = saved
    data = (folder / SAFETENSORS_NAME).read_bytes()
    (folder / SAFETENSORS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
        JetMoeForCausalLM.from_pretrained(folder)


def test_missing_folder_and_missing_weights(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere does not exist"):
        JetMoeForCausalLM.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(CONFIG.to_json_string())
    with pytest.raises(CheckpointError, match=r"no weights in .*found \['config.json'\]"):
        JetMoeForCausalLM.from_pretrained(tmp_path)


def test_shard_index_naming_a_missing_file(saved):
    model, folder = saved
    model.save_pretrained(folder, max_shard_size=100_000)
    next(folder.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="names shard files that do not exist"):
        JetMoeForCausalLM.from_pretrained(folder)


# ---- checkpoint semantics that must follow HF's ----------------------------------------------------------------


def _tiny(tmp_path, **changes):
    config = JetMoeConfig.from_preset("tiny").replace(**changes)
    model = make_model(config, seed=4)
    model.save_pretrained(tmp_path)
    return model


def test_a_stored_lm_head_that_differs_stays_untied(tmp_path, caplog):
    """tie_word_embeddings=true but a different lm_head.weight stored: HF 5.x keeps it (untied), with a warning."""
    model = _tiny(tmp_path)
    state = load_file(tmp_path / SAFETENSORS_NAME)
    head = torch.randn_like(state["model.embed_tokens.weight"])
    save_file({**state, "lm_head.weight": head}, tmp_path / SAFETENSORS_NAME, metadata={"format": "pt"})
    loaded = JetMoeForCausalLM.from_pretrained(tmp_path)
    assert "keeping lm_head untied" in caplog.text
    assert torch.equal(loaded.lm_head.weight, head) and not loaded.config.tie_word_embeddings
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert not torch.allclose(loaded(ids).logits, model(ids).logits)
    loaded.save_pretrained(tmp_path / "again")  # a save keeps the untied head
    assert torch.equal(load_file(tmp_path / "again" / SAFETENSORS_NAME)["lm_head.weight"], head)
    save_file({**state, "lm_head.weight": state["model.embed_tokens.weight"].clone()}, tmp_path / SAFETENSORS_NAME,
              metadata={"format": "pt"})
    tied = JetMoeForCausalLM.from_pretrained(tmp_path)  # an equal stored head (HF saves may hold one) stays tied
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


def test_the_index_decides_which_shard_a_tensor_comes_from(tmp_path, caplog):
    model = _tiny(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "sharded", max_shard_size=200_000)
    index = json.loads((tmp_path / "sharded" / SAFETENSORS_INDEX_NAME).read_text())
    first, second = sorted(set(index["weight_map"].values()))[:2]
    name = next(n for n, f in index["weight_map"].items() if f == first)
    shard = load_file(tmp_path / "sharded" / second)
    shard[name] = torch.zeros_like(load_file(tmp_path / "sharded" / first)[name])  # a stray copy elsewhere
    save_file(shard, tmp_path / "sharded" / second, metadata={"format": "pt"})
    loaded = JetMoeForCausalLM.from_pretrained(tmp_path / "sharded")
    assert "ignoring tensors stored in a shard the index does not assign" in caplog.text
    assert torch.equal(loaded.state_dict()[name], model.state_dict()[name])  # the assigned copy won


def test_weights_stored_in_another_type_than_the_config_says_warn(tmp_path, caplog):
    _tiny(tmp_path)
    state = {k: v.half() for k, v in load_file(tmp_path / SAFETENSORS_NAME).items()}
    save_file(state, tmp_path / SAFETENSORS_NAME, metadata={"format": "pt"})
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "dtype": "bfloat16"}))
    JetMoeForCausalLM.from_pretrained(tmp_path)
    assert "stored as F16 but config.json says dtype bfloat16" in caplog.text


def test_nan_weights_are_refused(tmp_path):
    _tiny(tmp_path)
    state = load_file(tmp_path / SAFETENSORS_NAME)
    state["model.norm.weight"][3] = float("nan")
    save_file(state, tmp_path / SAFETENSORS_NAME, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model.norm.weight holds 1 NaN or infinite value"):
        JetMoeForCausalLM.from_pretrained(tmp_path)


def test_weight_files_have_ordinary_modes(tmp_path):
    _tiny(tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes[SAFETENSORS_NAME] == modes["config.json"], modes


def test_shard_plan_follows_hf_s_greedy_rule():
    assert plan_shards([("a", 3), ("b", 3), ("c", 5), ("d", 1)], 6) == [["a", "b"], ["c", "d"]]
    assert plan_shards([("big", 10), ("x", 1), ("y", 4)], 4) == [["big"], ["x"], ["y"]]  # too big: a shard alone
    assert shard_file_names(1) == [SAFETENSORS_NAME]
    assert shard_file_names(3)[1] == "model-00002-of-00003.safetensors"


def test_reading_some_tensors_reads_only_their_bytes(tmp_path, monkeypatch):
    """Layer by layer (validate/reference.py) and lm_head_tied read a few tensors: the others' bytes stay on disk
    (reading them all made each layer of jetmoe-8b read the whole 17 GB checkpoint)."""
    from jetmoe import checkpoint

    model = _tiny(tmp_path / "ckpt")
    model.save_pretrained(tmp_path / "sharded", max_shard_size=200_000)
    weights = checkpoint.verify(tmp_path / "sharded", JetMoeForCausalLM, model.config)
    wanted = {name for name in model.state_dict() if name.startswith("model.layers.1.")}
    read = []

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):  # read (the header), seek
            return getattr(self.f, name)

        def readinto(self, buffer):
            read.append(len(buffer))
            return self.f.readinto(buffer)

    monkeypatch.setattr(checkpoint, "open", lambda path, mode: Counting(open(path, mode)), raising=False)
    loaded = dict(checkpoint.iter_tensors(weights, wanted))
    assert loaded.keys() == wanted
    assert all(torch.equal(loaded[name], model.state_dict()[name]) for name in wanted)
    assert sum(read) == sum(t.nbytes for t in loaded.values())
