"""The files written beside model.onnx for other tools: HF configs, onnxruntime-genai's config, tokenizer copies.

onnxruntime-genai's greedy generator must give eager's greedy tokens on the tiny export, at batch 1 and on
right-padded batches (genai's padding side: it masks only the trailing pad tokens of each row).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from export.manifest import DATA_NAME, MODEL_NAME, read_manifest
from export.ort_graph import ORT_MODEL_NAME
from export.sidecars import (
    GENAI_CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    TOKENIZER_FILES,
    add_sidecars,
    genai_config,
    write_sidecars,
)
from jetmoe.config import CONFIG_NAME, JetMoeConfig
from jetmoe.io_names import IoNames

PROMPTS = [[[5, 17, 99, 3]], [[7]], [[5, 17, 99, 3, 44, 81, 9], [11, 12]],
           [[300, 301, 302], [5, 6, 7, 8, 9, 10], [400]]]
NEW_TOKENS = 12


def genai_generate(og, model, prompts: list[list[int]], new_tokens: int, pad: int) -> list[list[int]]:
    S = max(map(len, prompts))
    ids = np.full((len(prompts), S), pad, dtype=np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt  # right padding: genai masks each row's trailing pad tokens
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=S + new_tokens, do_sample=False, batch_size=len(prompts))
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    return [[int(t) for t in generator.get_sequence(row)[S:]] for row in range(len(prompts))]


@pytest.fixture(scope="module")
def og():
    return pytest.importorskip("onnxruntime_genai", reason="pip install 'jetmoe-trt[genai]'")


@pytest.mark.parametrize("prompts", PROMPTS, ids=lambda p: "x".join(str(len(r)) for r in p))
def test_genai_greedy_tokens_equal_eager(og, exported, tiny_checkpoint, prompts):
    folder = exported().parent
    _, eager = tiny_checkpoint
    pad = json.loads((folder / GENAI_CONFIG_NAME).read_text())["model"]["pad_token_id"]
    tokens = genai_generate(og, og.Model(str(folder)), prompts, NEW_TOKENS, pad)
    expected = eager.generate(prompts, max_new_tokens=NEW_TOKENS)
    for row, (want, got) in enumerate(zip(expected, tokens, strict=True)):
        print(f"row {row}: eager {want}, onnxruntime-genai {got}")
        assert got[:len(want)] == want, f"row {row}: eager {want}, onnxruntime-genai {got}"


def test_genai_runs_from_token_ids_without_tokenizer_files(og, exported):
    folder = exported().parent
    assert not any((folder / name).exists() for name in TOKENIZER_FILES)
    model = og.Model(str(folder))
    with pytest.raises(RuntimeError, match="tokenizer_config.json"):
        og.Tokenizer(model)


def byte_level_tokenizer(folder, vocab_size: int) -> None:
    """A small byte-level BPE tokenizer (the kind onnxruntime-genai's tokenizer loads), ids < vocab_size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog", "hello world"] * 10, trainer)
    assert tokenizer.get_vocab_size() <= vocab_size
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))


def test_an_older_export_gets_its_sidecars_and_genai_tokenizes(og, exported, tiny_checkpoint, tmp_path):
    """add_sidecars: an export without the sidecars (made before them) gets them, recorded in export.json; the
    tokenizer files come from the checkpoint given."""
    pytest.importorskip("tokenizers", reason="pip install tokenizers")
    source = exported().parent
    _, eager = tiny_checkpoint
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    byte_level_tokenizer(checkpoint, eager.config.vocab_size)
    folder = tmp_path / "export"
    folder.mkdir()
    for name in (MODEL_NAME, DATA_NAME, ORT_MODEL_NAME):
        os.symlink(source / name, folder / name)
    manifest = read_manifest(source)
    old = {name: record for name, record in manifest.files.items() if name in (MODEL_NAME, DATA_NAME, ORT_MODEL_NAME)}
    dataclasses.replace(manifest, files=old).write(folder)

    written = add_sidecars(folder, checkpoint)
    assert sorted(written) == sorted([CONFIG_NAME, GENERATION_CONFIG_NAME, GENAI_CONFIG_NAME, "tokenizer.json",
                                      "tokenizer_config.json"])
    read_manifest(folder).verify_files(folder, sha256=True)  # every file recorded, as the exporter records them
    assert set(read_manifest(folder).files) == set(old) | set(written)
    for name in (CONFIG_NAME, GENERATION_CONFIG_NAME, GENAI_CONFIG_NAME):
        assert (folder / name).read_bytes() == (source / name).read_bytes(), name

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ids = [int(t) for t in tokenizer.encode("hello world the fox")]
    assert tokenizer.decode(ids) == "hello world the fox"
    from tokenizers import Tokenizer

    assert ids == Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode("hello world the fox").ids
    got = genai_generate(og, model, [ids], 6, eager.config.eos_token_id)[0]
    want = eager.generate([ids], max_new_tokens=6)[0]
    assert got[:len(want)] == want


def test_hf_config_round_trips(exported, tiny_checkpoint):
    folder = exported().parent
    _, eager = tiny_checkpoint
    assert JetMoeConfig.from_pretrained(folder) == eager.config.replace(dtype="float32")  # the export's dtype
    raw = json.loads((folder / CONFIG_NAME).read_text())
    assert raw["architectures"] == ["JetMoeForCausalLM"] and raw["torch_dtype"] == raw["dtype"] == "float32"
    assert raw["rope_theta"] == raw["rope_parameters"]["rope_theta"]  # transformers 4.x reads only the former
    generation = json.loads((folder / GENERATION_CONFIG_NAME).read_text())
    assert generation["eos_token_id"] == eager.config.eos_token_id and generation["do_sample"] is False


def test_transformers_reads_the_configs(exported, tiny_checkpoint, transformers):
    folder = exported().parent
    _, eager = tiny_checkpoint
    config = transformers.AutoConfig.from_pretrained(folder)
    assert type(config).__name__ == "JetMoeConfig"
    assert (config.num_key_value_heads, config.kv_channels, config.rms_norm_eps) == (
        eager.config.num_key_value_heads, eager.config.kv_channels, eager.config.rms_norm_eps)
    assert config.rope_parameters["rope_theta"] == eager.config.rope_theta
    generation = transformers.GenerationConfig.from_pretrained(folder)
    assert generation.eos_token_id == eager.config.eos_token_id


def test_genai_config_names_and_sizes():
    config = JetMoeConfig.from_preset("tiny", pad_token_id=0, eos_token_id=[2, 5])
    out = genai_config(config, IoNames(config.num_hidden_layers), {"eos_token_id": [2, 5], "do_sample": True,
                                                                  "top_p": 0.9})
    decoder = out["model"]["decoder"]
    assert decoder["inputs"]["past_key_names"] % 1 == "past_key_values.1.key"
    assert decoder["outputs"]["present_value_names"] % 1 == "present.1.value"
    assert (decoder["head_size"], decoder["num_key_value_heads"]) == (config.kv_channels, config.num_key_value_heads)
    assert out["model"]["pad_token_id"] == 0 and out["model"]["eos_token_id"] == [2, 5]
    assert out["search"]["past_present_share_buffer"] is False
    assert out["search"]["do_sample"] is True and out["search"]["top_p"] == 0.9


def test_the_checkpoint_s_generation_config_and_tokenizer_files_are_kept(tmp_path):
    config = JetMoeConfig.from_preset("tiny")
    checkpoint, out = tmp_path / "ckpt", tmp_path / "out"
    checkpoint.mkdir()
    out.mkdir()
    (checkpoint / GENERATION_CONFIG_NAME).write_text(json.dumps({"eos_token_id": 2, "temperature": 0.7,
                                                                 "do_sample": True}))
    (checkpoint / "tokenizer.model").write_bytes(b"\x00sentencepiece")
    written = write_sidecars(out, config, task="causal-lm", dtype="fp16", names=IoNames(2), checkpoint_dir=checkpoint)
    assert sorted(written) == sorted([CONFIG_NAME, GENERATION_CONFIG_NAME, GENAI_CONFIG_NAME, "tokenizer.model"])
    assert json.loads((out / GENERATION_CONFIG_NAME).read_text())["temperature"] == 0.7
    assert json.loads((out / GENAI_CONFIG_NAME).read_text())["search"]["temperature"] == 0.7
    assert json.loads((out / CONFIG_NAME).read_text())["torch_dtype"] == "float16"
    assert (out / "tokenizer.model").read_bytes() == b"\x00sentencepiece"


def test_sequence_classification_gets_no_generation_files(classification_export):
    folder = classification_export[0].parent
    assert set(read_manifest(folder).files) - {MODEL_NAME, DATA_NAME, ORT_MODEL_NAME} == {CONFIG_NAME}
    raw = json.loads((folder / CONFIG_NAME).read_text())
    assert raw["architectures"] == ["JetMoeForSequenceClassification"] and raw["num_labels"] == 3
