"""The `jetmoe` console command: checkpoint, generate, demo; errors exit 1 with one line and no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from jetmoe import JetMoeForCausalLM
from jetmoe.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    assert main(["checkpoint", "--preset", "tiny", "-o", str(out), "--seed", "4"]) == 0
    return out


def test_generate_prints_the_api_s_tokens(checkpoint, capsys):
    capsys.readouterr()
    assert main(["generate", str(checkpoint), "--prompt-ids", "1,2,3", "--prompt-ids", "7",
                 "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.split()
    expected = JetMoeForCausalLM.from_pretrained(checkpoint).generate([[1, 2, 3], [7]], max_new_tokens=5)
    assert lines == [",".join(map(str, tokens)) for tokens in expected]


def test_text_prompts_with_a_tokenizer(checkpoint, tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers", reason="text prompts need the tokenizers package")
    folder = tmp_path / "with-tokenizer"
    shutil.copytree(checkpoint, folder)
    vocab = {f"w{i}": i for i in range(512)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.decoder = tokenizers.decoders.WordPiece()
    tokenizer.save(str(folder / "tokenizer.json"))
    capsys.readouterr()
    assert main(["generate", str(folder), "--prompt", "w1 w2 w3", "--max-new-tokens", "4"]) == 0
    ids_line, text_line = capsys.readouterr().out.splitlines()
    expected = JetMoeForCausalLM.from_pretrained(checkpoint).generate([[1, 2, 3]], max_new_tokens=4)[0]
    assert ids_line == ",".join(map(str, expected))
    assert text_line.split() == [f"w{i}" for i in expected]


def test_seeds_make_different_checkpoints(checkpoint, tmp_path):
    assert main(["checkpoint", "-o", str(tmp_path / "other"), "--seed", "5"]) == 0
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (checkpoint / "model.safetensors").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["generate", "{ckpt}", "--prompt-ids", "1,x"], "--prompt-ids '1,x' is not a comma-separated list of integers"),
    (["generate", "{ckpt}", "--prompt-ids", "1,9999"], "token id 9999 is outside the vocabulary"),
    (["generate", "{ckpt}"], "give at least one --prompt-ids or --prompt"),
    (["generate", "{ckpt}", "--prompt", "hello"], "tokenizer.json"),
    (["generate", "{missing}", "--prompt-ids", "1"], "does not exist"),
    (["checkpoint", "-o", "{ckpt}"], "already exists; pass --overwrite"),
    (["checkpoint", "--preset", "huge", "-o", "{missing}"], "unknown preset 'huge'"),
])
def test_errors_exit_1_with_a_message(argv, message, checkpoint, tmp_path, capsys):
    argv = [a.format(ckpt=checkpoint, missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists()


def test_console_script_and_demo(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jetmoe.cli", "demo", "--workdir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cached decode vs full forward" in result.stdout and "demo finished" in result.stdout
    assert (tmp_path / "demo" / "checkpoint" / "model.safetensors").is_file()
    usage = subprocess.run([sys.executable, "-m", "jetmoe.cli", "generate"], capture_output=True, text=True)
    assert usage.returncode == 2


def test_export_and_onnx_generate(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "onnx")]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "onnx" / "model.onnx"), "--prompt-ids", "1,2,3",
                 "--prompt-ids", "7", "--max-new-tokens", "5"]) == 0
    onnx_lines = capsys.readouterr().out.split()
    assert main(["generate", str(checkpoint), "--prompt-ids", "1,2,3", "--prompt-ids", "7",
                 "--max-new-tokens", "5"]) == 0
    assert onnx_lines == capsys.readouterr().out.split()
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "onnx")]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # a usage error: argparse exits 2
        main(["generate", str(tmp_path / "onnx" / "model.onnx"), "--prompt-ids", "1", "--provider", "tpu"])
    assert usage.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
