"""Build requests checked before TensorRT is touched, and clear errors where TensorRT or a GPU is missing."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from engines import builder
from engines.flavour import require_cuda_gpu
from engines.manifest import manifest_path, write_manifest
from jetmoe.cli import build_parser
from jetmoe.errors import EngineError, InputError, JetMoeError, OutputError
from jetmoe.errors import Unavailable as TensorRTUnavailable


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)


@pytest.fixture
def onnx_copy(exported, tmp_path):
    """A private copy of the tiny fp32 export (tests may tamper with it)."""
    src = exported("fp32").parent
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    return dst / "model.onnx"


def test_plan_reads_export_json(onnx_copy, tmp_path):
    plan = builder.plan_build(onnx_copy, tmp_path / "model.engine", max_batch=3, max_seq=40)
    assert plan.dtype == "fp32" and plan.names.inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert [p.name for p in plan.profiles] == ["prefill", "decode"]
    assert plan.profiles[1].shapes["past_key_values.0.key"][2] == (3, plan.config.num_key_value_heads, 39,
                                                                    plan.config.kv_channels)


def test_plan_refusals(onnx_copy, tmp_path):
    engine = tmp_path / "model.engine"
    with pytest.raises(InputError, match="no ONNX model at"):
        builder.plan_build(tmp_path / "missing.onnx", engine)
    with pytest.raises(EngineError, match="exported in fp32, but a bf16 engine was asked for.*--dtype bf16"):
        builder.plan_build(onnx_copy, engine, dtype="bf16")
    with pytest.raises(InputError, match="exceeds the model's max_position_embeddings 512"):
        builder.plan_build(onnx_copy, engine, max_seq=100_000)
    with pytest.raises(InputError, match="plugin_mode 'fast'"):
        builder.plan_build(onnx_copy, engine, plugin_mode="fast")
    engine.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        builder.plan_build(onnx_copy, engine)
    with pytest.raises(InputError, match="does not exist"):
        builder.plan_build(onnx_copy, tmp_path / "nope" / "model.engine")
    with pytest.raises(OutputError, match="would overwrite the input"):
        builder.plan_build(onnx_copy, onnx_copy.parent / "model.engine")


def test_plan_refuses_a_modified_onnx(onnx_copy, tmp_path):
    data = onnx_copy.with_name("model.onnx.data")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # same size, one weight byte changed
    data.write_bytes(bytes(raw))
    with pytest.raises(EngineError, match="model.onnx.data differs .* modified after export"):
        builder.plan_build(onnx_copy, tmp_path / "model.engine")
    with open(onnx_copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(EngineError, match="truncated or replaced"):
        builder.plan_build(onnx_copy, tmp_path / "model.engine")


def test_plan_needs_export_json(onnx_copy, tmp_path):
    (onnx_copy.parent / "export.json").unlink()
    with pytest.raises(EngineError, match="export.json is missing"):
        builder.plan_build(onnx_copy, tmp_path / "model.engine")


def test_build_without_tensorrt_is_one_clear_error(onnx_copy, tmp_path, no_tensorrt):
    with pytest.raises(TensorRTUnavailable) as e:
        builder.build_engine(onnx_copy, tmp_path / "model.engine")
    assert "tensorrt is not installed" in str(e.value) and "NVIDIA's package index" in str(e.value)
    assert isinstance(e.value, JetMoeError) and "\n" not in str(e.value)
    assert not (tmp_path / "model.engine").exists()


def test_build_arguments_are_checked_before_tensorrt(onnx_copy, tmp_path, no_tensorrt):
    with pytest.raises(InputError, match="builder_optimization_level must be 0..5, got 9"):
        builder.build_engine(onnx_copy, tmp_path / "model.engine", builder_optimization_level=9)


def test_plugins_and_runtime_without_tensorrt(tmp_path, no_tensorrt):
    from test_manifest import make_manifest

    from engines.plugins import register_plugins
    from engines.runtime import TrtRunner

    with pytest.raises(TensorRTUnavailable, match="tensorrt is not installed"):
        register_plugins()
    engine = tmp_path / "model.engine"
    with pytest.raises(InputError, match="no TensorRT engine at"):
        TrtRunner(engine)
    engine.write_bytes(b"plan")
    with pytest.raises(EngineError, match="no engine manifest"):
        TrtRunner(engine)
    write_manifest(engine, make_manifest())
    with pytest.raises(TensorRTUnavailable, match="tensorrt is not installed"):
        TrtRunner(engine).activate()


def test_no_gpu_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU is visible"):
        require_cuda_gpu()


def test_atomic_write_bytes(tmp_path, monkeypatch):
    path = tmp_path / "model.engine"
    builder.atomic_write_bytes(path, b"one")
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OutputError):
        builder.atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["model.engine"]


def test_build_subcommand_parses_and_fails_cleanly(onnx_copy, tmp_path, no_tensorrt):
    args = build_parser().parse_args(["build", str(onnx_copy), "-o", str(tmp_path / "m.engine"), "--max-batch", "4",
                              "--max-seq", "64", "--opt-batch", "2", "--timing-cache", str(tmp_path / "t.cache"),
                              "--builder-optimization-level", "2"])
    assert (args.max_batch, args.max_seq, args.opt_batch, args.builder_optimization_level) == (4, 64, 2, 2)
    assert args.plugin_mode == "aot"
    with pytest.raises(TensorRTUnavailable):
        args.run(args)
    assert not manifest_path(tmp_path / "m.engine").exists()
    assert json.loads((onnx_copy.parent / "export.json").read_text())["dtype"] == "fp32"


def test_plugins_subcommand_emits_ptx_with_its_options(tmp_path, monkeypatch, capsys):
    """`jetmoe plugins --emit-ptx DIR`: options reach `emit_ptx` (which the kernel tests run for real)."""
    from engines import plugin_kernels
    from jetmoe import cli

    calls = []

    def emit_ptx(out_dir, *, arch=90, isa=None, overwrite=False):
        calls.append((out_dir, {"arch": arch, "isa": isa, "overwrite": overwrite}))
        return {"kernels": [{}] * 36, "ptx_isa": "8.3", "arch": arch}

    monkeypatch.setattr(plugin_kernels, "emit_ptx", emit_ptx)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pytest.importorskip("triton", reason="the plugins subcommand needs triton")
    assert cli.main(["plugins", "--emit-ptx", str(tmp_path / "ptx"), "--ptx-isa", "8.3", "--arch", "90"]) == 0
    assert calls == [(tmp_path / "ptx", {"arch": 90, "isa": 83, "overwrite": False})]
    assert "36 kernels, PTX 8.3, sm_90" in capsys.readouterr().out
    assert cli.main(["plugins", "--emit-ptx", str(tmp_path), "--ptx-isa", "eight"]) == 1
    assert "--ptx-isa 'eight': expected X.Y" in capsys.readouterr().err
    assert cli.main(["plugins", "--emit-ptx", str(tmp_path), "--arch", "75"]) == 1
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert cli.main(["plugins", "--emit-ptx", str(tmp_path)]) == 1
    assert "unset TRITON_INTERPRET" in capsys.readouterr().err
    assert len(calls) == 1


# ---- TensorRT-RTX: builds on this machine (no GPU), through the command --------------------------------------------


def test_rtx_build_through_the_command(rtx, exported, tmp_path, capsys):
    """`jetmoe build OUT/model.onnx -o E --backend tensorrt-rtx --compute-capability 8.6` (fp16: the other dtypes
    are built in test_rtx_build.py)."""
    from jetmoe.cli import main

    onnx_path, engine = exported("fp16", dispatch="portable"), tmp_path / "model.engine"
    capsys.readouterr()
    args = ["build", str(onnx_path), "-o", str(engine), "--backend", "tensorrt-rtx", "--compute-capability", "8.6",
            "--compute-capability", "8.9", "--max-batch", "2", "--max-seq", "48"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"{engine} (tensorrt-rtx {rtx.__version__}, fp16)"
    manifest = json.loads(manifest_path(engine).read_text())
    assert (manifest["backend"], manifest["compute_capabilities"], manifest["dtype"]) == ("tensorrt-rtx",
                                                                                         [[8, 6], [8, 9]], "fp16")
    decode = manifest["profiles"][1]["shapes"]["past_key_values.0.key"]
    assert [decode[0][2], decode[2][2]] == [0, 47]  # min past_seq 0
    assert engine.stat().st_size > 1_000_000
    assert main(args) == 1 and "exists; pass --overwrite" in capsys.readouterr().err


def test_rtx_refusals_through_the_command(exported, tmp_path, capsys):
    from jetmoe.cli import main

    engine, plugin, portable = tmp_path / "model.engine", str(exported()), str(exported("fp32", dispatch="portable"))
    capsys.readouterr()  # the exports' progress, when this test made them
    assert main(["build", plugin, "-o", str(engine), "--backend", "tensorrt-rtx"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plugin dispatch" in err and "--dispatch portable" in err
    assert main(["build", portable, "-o", str(engine), "--backend", "tensorrt-rtx", "--compute-capability", "9.0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compute capability '9.0' is not a TensorRT-RTX target" in err
    assert not engine.exists()
