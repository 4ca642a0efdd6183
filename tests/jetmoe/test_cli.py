"""The `jetmoe` console command: checkpoint, generate, demo; errors exit 1 with one line and no traceback."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from jetmoe import JetMoeConfig, JetMoeForCausalLM
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


def test_checkpoint_shards_and_dtype_flags(checkpoint, tmp_path, capsys):
    assert main(["checkpoint", "-o", str(tmp_path / "sharded"), "--seed", "4", "--max-shard-size", "0.5MB",
                 "--dtype", "bf16"]) == 0
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2 and index["metadata"]["total_size"] == 1911040 // 2
    assert JetMoeConfig.from_pretrained(tmp_path / "sharded").dtype == "bfloat16"
    same = JetMoeForCausalLM.from_pretrained(tmp_path / "sharded", dtype="fp32").state_dict()
    for key, value in JetMoeForCausalLM.from_pretrained(checkpoint).state_dict().items():
        assert torch.equal(same[key], value.bfloat16().float()), key  # same seed, same weights, in bf16
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["checkpoint", "-o", str(tmp_path / "x"), "--max-shard-size", "5TB"])
    assert "'5TB' is not a size" in capsys.readouterr().err


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


# ---- the error boundary and the output rule, through the command ---------------------------------------------


def run_cli(*argv, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "jetmoe", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def one_line_error(result, code=1):
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if "error" in line or "interrupted" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def test_nothing_the_user_owns_is_lost(checkpoint, tmp_path, capsys):
    before = sorted(p.name for p in checkpoint.iterdir())
    assert main(["export", str(checkpoint), "-o", str(checkpoint), "--overwrite"]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "-o", str(checkpoint.parent), "--overwrite"]) == 1
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    for argv in (["checkpoint", "-o", str(tmp_path / "notes"), "--overwrite"],
                 ["demo", "--workdir", str(tmp_path / "notes")]):
        assert main(argv) == 1
        assert "holds files" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(["checkpoint", "-o", str(tmp_path / "a_file"), "--overwrite"]) == 1
    assert "is not a folder; refusing to replace it with one" in capsys.readouterr().err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me" and (tmp_path / "a_file").read_text() == "x"


def test_the_current_folder_is_never_an_output(checkpoint, tmp_path):
    line = one_line_error(run_cli("export", checkpoint, "-o", ".", "--overwrite", cwd=tmp_path))
    assert "current folder" in line
    line = one_line_error(run_cli("demo", "--workdir", ".", cwd=tmp_path))
    assert "current folder" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_export_exits_130_and_leaves_nothing(checkpoint, tmp_path, signal_number):
    proc = subprocess.Popen([sys.executable, "-m", "jetmoe", "export", str(checkpoint), "-o", str(tmp_path / "out")],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # interrupt once the export has started writing
        if "tracing" in line:
            break
    proc.send_signal(signal_number)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; nothing half-written was kept" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary


@pytest.mark.parametrize("argv, message", [
    (["generate", "{ckpt}", "--prompt-ids", "1,99999999999999999999"], "does not fit a 64-bit integer"),
    (["generate", "{ckpt}", "--prompt-ids", "1,2", "--max-new-tokens", "600"],
     "max_new_tokens=600 = 602 exceeds max_position_embeddings=512; lower max_new_tokens"),
    (["generate", "{weightless}", "--prompt-ids", "1", "--max-new-tokens", "0"], "max_new_tokens must be"),
    (["bench", "{ckpt}", "--reps", "0"], "reps must be an integer >= 1, got 0"),
    (["bench", "{ckpt}", "--threads", "-1"], "threads must be a positive integer, got -1"),
    (["validate", "{ckpt}", "--onnx", "{ckpt}/x.onnx", "--json", "{file}/report.json"], "is not a folder"),
    (["validate", "{ckpt}", "--onnx", "{ckpt}", "--tolerance", "logits_atol=nan"], "must be a finite number"),
    (["validate", "{ckpt}", "--onnx", "{ckpt}", "--tolerance", "generation_must_match=maybe"], "not true or false"),
    (["lint", "{file}"], "is not a readable ONNX model"),
])
def test_expected_failures_are_one_line(argv, message, checkpoint, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not onnx")
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    shutil.copy(checkpoint / "config.json", weightless / "config.json")  # flags are checked before any weight
    argv = [a.format(ckpt=checkpoint, file=tmp_path / "a_file", weightless=weightless) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_corrupt_tokenizer_is_one_line(checkpoint, tmp_path, capsys):
    pytest.importorskip("tokenizers")
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    (folder / "tokenizer.json").write_text("{broken")
    assert main(["generate", str(folder), "--prompt", "hello"]) == 1
    assert "tokenizer.json is not a readable tokenizer" in capsys.readouterr().err


def test_version_and_help_say_what_is_written(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("jetmoe-trt ")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "model.onnx.data" in help_text and "(default: fp32)" in help_text and "(default: 21)" in help_text


def test_stream_prints_the_same_line_and_onnx_refuses_another_dtype(checkpoint, exported, capsys):
    assert main(["generate", str(checkpoint), "--prompt-ids", "1,2,3", "--max-new-tokens", "5"]) == 0
    plain = capsys.readouterr().out
    assert main(["generate", str(checkpoint), "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--stream"]) == 0
    assert capsys.readouterr().out == plain
    assert main(["generate", str(exported()), "--prompt-ids", "1", "--dtype", "bf16"]) == 1
    assert "runs in fp32; --dtype bf16 applies to checkpoints" in capsys.readouterr().err
    assert main(["generate", str(exported().parent), "--prompt-ids", "1", "--max-new-tokens", "2"]) == 0  # folder


def test_hf_call_habits(checkpoint):
    import torch

    from jetmoe import InputError

    model = JetMoeForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32)
    expected = model.generate([[5, 6, 7]], max_new_tokens=3)
    assert model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3) == expected
    assert model.generate(input_ids=torch.tensor([[0, 5, 6, 7]]), attention_mask=torch.tensor([[0, 1, 1, 1]]),
                          max_new_tokens=3) == expected
    with pytest.raises(InputError, match="no max_length=.*pass max_new_tokens"):
        model.generate([[5, 6, 7]], max_length=10)


def test_quantize_then_generate_validate_and_lint(exported, tiny_checkpoint, tmp_path, capsys):
    """`jetmoe quantize` writes an export the other commands read: generate runs it, validate judges it (on the fp32
    limits, which int8 experts do not meet: exit 1 with the table), lint says it is not for TensorRT."""
    pytest.importorskip("onnxruntime")
    from export.onnx_runtime import OnnxrtRunner
    from jetmoe.generate import generate

    out = tmp_path / "int8"
    assert main(["quantize", str(exported().parent), "-o", str(out), "--experts", "mlp"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "model.onnx")
    assert json.loads((out / "export.json").read_text())["quantization"]["experts"] == ["mlp"]
    assert main(["generate", str(out), "--prompt-ids", "5,17,99", "--max-new-tokens", "4"]) == 0
    with OnnxrtRunner(out) as runner:
        assert capsys.readouterr().out.split() == [",".join(map(str, generate(runner, [[5, 17, 99]],
                                                                              max_new_tokens=4)[0]))]
    assert main(["validate", str(tiny_checkpoint[0]), "--onnx", str(out), "--long-context", "0",
                 "--generation-tokens", "4"]) == 1
    captured = capsys.readouterr()
    assert "onnxruntime-cpu" in captured.out and "do not match the eager model" in captured.err
    assert main(["lint", str(out)]) == 1
    assert "ONNX Runtime-only copy" in capsys.readouterr().out
    assert main(["quantize", str(exported().parent), "-o", str(out)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["lint", str(exported().parent / "model.ort.onnx")]) == 1
    assert "TensorRT takes model.onnx" in capsys.readouterr().out
    for name in ("model.onnx.data", "config.json"):  # another file of an export folder: one line, not a traceback
        assert main(["quantize", str(exported().parent / name), "-o", str(tmp_path / "q")]) == 1
        assert "is not the export's model.onnx" in capsys.readouterr().err and not (tmp_path / "q").exists()
    assert main(["quantize", str(exported("fp16").parent), "-o", str(tmp_path / "q"), "--scheme", "int8-dynamic"]) == 1
    assert "int8-dynamic needs fp32 activations" in capsys.readouterr().err and not (tmp_path / "q").exists()
    assert main(["quantize", str(exported("bf16").parent), "-o", str(tmp_path / "bf16")]) == 1
    assert "is a bf16 export" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    assert "(default:int8-weight-only)" in "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens


def test_overwrite_replaces_only_the_same_command_s_folder(exported, tiny_checkpoint, tmp_path, capsys):
    """export, quantize and checkpoint folders share marker files (export.json, config.json): --overwrite of one
    command must not replace another's folder."""
    ckpt = tiny_checkpoint[0]
    exp, quantized = tmp_path / "exp", tmp_path / "int8"
    assert main(["export", str(ckpt), "-o", str(exp)]) == 0
    assert main(["quantize", str(exp), "-o", str(quantized)]) == 0
    assert main(["quantize", str(exp), "-o", str(quantized), "--overwrite"]) == 0  # its own folder: replaced
    assert main(["export", str(ckpt), "-o", str(exp), "--overwrite"]) == 0
    capsys.readouterr()
    before = {str(p): p.stat().st_mtime_ns for p in (*exp.iterdir(), *quantized.iterdir())}
    for argv, other in ((["quantize", str(exported().parent), "-o", str(exp)], "an export (`jetmoe export`)"),
                        (["export", str(ckpt), "-o", str(quantized)], "a quantized export (`jetmoe quantize`)"),
                        (["checkpoint", "--preset", "tiny", "-o", str(exp)], "a config.json without checkpoint")):
        assert main([*argv, "--overwrite"]) == 1
        assert f"holds {other}" in capsys.readouterr().err
    assert {str(p): p.stat().st_mtime_ns for p in (*exp.iterdir(), *quantized.iterdir())} == before
    assert json.loads((quantized / "export.json").read_text())["quantization"] is not None
