"""End to end on a TensorRT machine: build the tiny preset's engines, validate them against eager, generate.

    pytest -m trt tests/engines/test_trt_engine.py -v

Skipped (with the reason) where TensorRT or a CUDA GPU is missing. Builds take ~1 minute each.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest
import torch

pytestmark = pytest.mark.trt

MAX_BATCH, MAX_SEQ = 4, 512  # the validator's cases: 3 prompts, long context up to 512 - decode steps


def _skip_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (its builder comes from NVIDIA's package index, not PyPI)"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


@pytest.fixture(scope="module", params=["aot", "jit"])
def engine_path(request, exported, tmp_path_factory):
    from engines.builder import build_engine

    onnx = exported("fp32", validation_outputs=True)
    path = tmp_path_factory.mktemp("engine") / f"tiny-{request.param}.engine"
    build_engine(onnx, path, max_batch=MAX_BATCH, max_seq=MAX_SEQ, opt_batch=2, plugin_mode=request.param,
                 timing_cache=path.with_suffix(".cache"))
    return path


def test_manifest_written(engine_path):
    from engines.manifest import read_manifest

    manifest = read_manifest(engine_path)
    assert manifest.limits.max_batch == MAX_BATCH and manifest.compute_capability == torch.cuda.get_device_capability()
    assert manifest.backend == "tensorrt" and manifest.dispatch == "plugin"
    assert engine_path.with_suffix(".cache").is_file()


def test_validates_against_eager(engine_path, tiny_checkpoint):
    from validate.validator import validate_export

    folder, _ = tiny_checkpoint
    report = validate_export(folder, engine=engine_path)
    print(report.table())
    assert report, report.table()


def test_generate_matches_eager(engine_path, tiny_checkpoint):
    from engines.runtime import TrtRunner
    from jetmoe.generate import generate

    _, model = tiny_checkpoint
    prompts = [[1, 306, 4658, 278], [1, 7]]
    expected = model.generate(prompts, max_new_tokens=12)
    with TrtRunner(engine_path) as runner:
        assert generate(runner, prompts, max_new_tokens=12) == expected
        sampled = {"do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 3, "max_new_tokens": 8}
        assert generate(runner, prompts, **sampled) == model.generate(prompts, **sampled)
    with TrtRunner(engine_path, cuda_graphs=True) as runner:
        assert generate(runner, prompts, max_new_tokens=12) == expected
        assert generate(runner, prompts, max_new_tokens=12) == expected  # replays the captured decode graphs
        assert runner._graphs, "no decode CUDA graph was captured on the repeated generation"


def test_trtexec_runs_the_aot_engine_without_python(engine_path):
    if "aot" not in engine_path.name:
        pytest.skip("only AOT engines run without Python")
    trtexec = shutil.which("trtexec")
    if trtexec is None:
        pytest.skip("trtexec is not on PATH")
    from engines.manifest import read_manifest

    manifest = read_manifest(engine_path)
    config = manifest.model_config
    cache = f"2x{config.num_key_value_heads}x0x{config.kv_channels}"
    shapes = ",".join(["input_ids:2x7", "attention_mask:2x7", "position_ids:2x7"]
                      + [f"{n}:{cache}" for pair in manifest.io_names.past for n in pair])
    done = subprocess.run([trtexec, f"--loadEngine={engine_path}", f"--shapes={shapes}", "--iterations=3"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
