"""Engine manifest: atomic write, read back, and the decisions on whether an engine can run here."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from engines.manifest import (
    EngineManifest,
    check_compatible,
    manifest_path,
    read_manifest,
    write_manifest,
)
from engines.plugins import plugin_versions
from engines.profiles import make_profiles, resolve_limits
from jetmoe.config import JetMoeConfig
from jetmoe.errors import EngineError, EngineMismatch, OutputError
from jetmoe.io_names import IoNames

TINY = JetMoeConfig.from_preset("tiny")


def make_manifest(**changes) -> EngineManifest:
    limits = resolve_limits(TINY, max_batch=2, max_seq=64)
    manifest = EngineManifest(
        tensorrt_version="11.4.0.106", gpu_name="NVIDIA H200", compute_capability=(9, 0), dtype="bf16",
        task="causal-lm", validation_outputs=False, config=TINY.to_dict(), onnx_sha256="ab" * 32,
        plugins=plugin_versions(), plugin_mode="aot", limits=limits,
        profiles=make_profiles(TINY, IoNames(2), limits), engine_sha256="cd" * 32, ptx_isa="8.0")
    return dataclasses.replace(manifest, **changes)


HERE = {"tensorrt_version": "11.4.0.106", "gpu_name": "NVIDIA H200", "compute_capability": (9, 0),
        "plugins": {"jetmoe::expert_map": "1", "jetmoe::expert_reduce": "1"}}


def test_write_then_read(tmp_path):
    engine = tmp_path / "model.engine"
    path = write_manifest(engine, make_manifest())
    assert path == manifest_path(engine) == tmp_path / "model.engine.json"
    assert read_manifest(engine) == make_manifest()
    assert [p.name for p in tmp_path.iterdir()] == ["model.engine.json"]  # no temporary left behind
    raw = json.loads(path.read_text())
    assert raw["compute_capability"] == [9, 0] and raw["profiles"][1]["name"] == "decode"
    assert read_manifest(engine).io_names == IoNames(2) and read_manifest(engine).model_config == TINY


def test_ptx_isa_is_recorded_and_optional(tmp_path):
    """AOT engines record the PTX ISA of their kernels; a manifest without the field reads as ""."""
    engine = tmp_path / "model.engine"
    write_manifest(engine, make_manifest())
    assert json.loads(manifest_path(engine).read_text())["ptx_isa"] == "8.0"
    raw = make_manifest().to_dict()
    del raw["ptx_isa"]
    manifest_path(engine).write_text(json.dumps(raw))
    assert read_manifest(engine).ptx_isa == ""


def test_write_is_atomic(tmp_path, monkeypatch):
    engine = tmp_path / "model.engine"
    write_manifest(engine, make_manifest())
    before = manifest_path(engine).read_text()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match="could not write .*model.engine.json: disk full"):
        write_manifest(engine, make_manifest(dtype="fp32"))
    assert manifest_path(engine).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine.json"]


def test_missing_and_foreign_manifests(tmp_path):
    with pytest.raises(EngineError, match="no engine manifest at .*model.engine.json.*jetmoe build"):
        read_manifest(tmp_path / "model.engine")
    manifest_path(tmp_path / "x.engine").write_text("{not json")
    with pytest.raises(EngineError, match="not valid JSON"):
        read_manifest(tmp_path / "x.engine")
    manifest_path(tmp_path / "y.engine").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(EngineError, match="not a jetmoe-trt engine manifest"):
        read_manifest(tmp_path / "y.engine")
    raw = make_manifest().to_dict()
    del raw["profiles"]
    manifest_path(tmp_path / "z.engine").write_text(json.dumps(raw))
    with pytest.raises(EngineError, match=r"lacks \['profiles'\]"):
        read_manifest(tmp_path / "z.engine")


def test_compatible_here():
    assert check_compatible(make_manifest(), **HERE) == []


def test_a_tensorrt_rtx_engine_runs_on_any_of_its_targets():
    rtx = make_manifest(backend="tensorrt-rtx", gpu_name="", compute_capability=(8, 6),
                        compute_capabilities=[[8, 6], [8, 9]], plugins={}, plugin_mode="none", dispatch="portable")
    here = {**HERE, "compute_capability": (8, 9), "gpu_name": "NVIDIA GeForce RTX 4090", "plugins": {}}
    assert check_compatible(rtx, **here) == []  # no GPU name recorded: nothing to warn about
    with pytest.raises(EngineMismatch, match="built for compute capability 8.6, 8.9 but this GPU"):
        check_compatible(rtx, **{**here, "compute_capability": (12, 0)})


def test_other_gpu_model_same_capability_is_a_warning():
    (warning,) = check_compatible(make_manifest(gpu_name="NVIDIA H100 80GB HBM3"), **HERE)
    assert "tuned on NVIDIA H100 80GB HBM3, running on NVIDIA H200" in warning


@pytest.mark.parametrize("here, message", [
    ({"tensorrt_version": "10.15.1"}, "built with TensorRT 11.4.0.106 but TensorRT 10.15.1 is running"),
    ({"compute_capability": (8, 0), "gpu_name": "NVIDIA A100"},
     "built for compute capability 9.0 (NVIDIA H200) but this GPU, NVIDIA A100, is 8.0"),
    ({"plugins": {"jetmoe::expert_map": "2", "jetmoe::expert_reduce": "1"}},
     "plugin jetmoe::expert_map version 1 but this jetmoe-trt defines version 2"),
    ({"plugins": {"jetmoe::expert_reduce": "1"}},
     "plugin jetmoe::expert_map version 1, which this jetmoe-trt does not"),
])
def test_mismatches_are_errors(here, message):
    with pytest.raises(EngineMismatch) as e:
        check_compatible(make_manifest(), **{**HERE, **here})
    assert message in str(e.value)
