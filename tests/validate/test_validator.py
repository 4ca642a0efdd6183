"""The validator: a good export passes; deliberately broken exports fail and the report names where."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.exporter import DATA_NAME, export_checkpoint
from export.manifest import file_records, read_manifest
from jetmoe import CheckpointError, ExportError, InputError
from jetmoe.cli import main
from tests import known_bugs
from validate.metrics import Divergence
from validate.validator import validate_export

pytest.importorskip("onnxruntime")
FAST = dict(decode_steps=2, long_context=40, generation_tokens=8)


def first_failure(report):
    backend = report.backends[0]
    return next(step for step in backend.steps if not step.passed)


def test_good_export_passes(exported, tiny_checkpoint, tmp_path):
    report = validate_export(tiny_checkpoint[0], onnx=exported(validation_outputs=True), **FAST)
    print(report.table())
    assert report and report.backends[0].available and report.backends[0].passed
    steps = report.backends[0].steps
    assert [s.step for s in steps if s.case == "decode"] == ["prefill", "decode 1", "decode 2"]
    assert any(s.case.startswith("long-context") for s in steps)
    for step in steps:
        assert step.logits.max_abs < 1e-4 and step.logits.top1 == 1.0 and step.first_divergence is None
        assert len(step.routing) == 2 * 2 and all(r.agree == 1.0 for r in step.routing)
    assert report.backends[0].generation.first_divergent_step is None
    report.save(tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["passed"] is True and saved["backends"][0]["steps"][0]["logits"]["top5"] == 1.0


def test_export_without_validation_outputs_still_validates_logits(exported, tiny_checkpoint):
    report = validate_export(tiny_checkpoint[0], onnx=exported(), **FAST)
    assert report and all(step.routing is None for step in report.backends[0].steps)
    assert "--validation-outputs" in report.table()


def _export_with(monkeypatch, tiny_checkpoint, tmp_path, patch):
    with monkeypatch.context() as m:
        patch(m)
        return export_checkpoint(tiny_checkpoint[0], tmp_path / "broken", validation_outputs=True)


@pytest.mark.slow
@pytest.mark.parametrize("bug, patch, where", [
    ("block norms with the config eps", known_bugs.block_norms_with_config_eps, (0, "moa")),
    ("SwiGLU halves swapped", known_bugs.swiglu_halves_swapped, (0, "moe")),
    ("K/V interleaved instead of tiled", known_bugs.kv_interleaved, (0, "moa")),
])
def test_broken_exports_fail_and_name_the_sub_block(bug, patch, where, monkeypatch, tiny_checkpoint, tmp_path):
    broken = _export_with(monkeypatch, tiny_checkpoint, tmp_path, patch)
    report = validate_export(tiny_checkpoint[0], onnx=broken, **FAST)
    print(bug, "\n", report.table())
    assert not report
    step = first_failure(report)
    assert (step.first_divergence.layer, step.first_divergence.block) == where
    assert f"layer {where[0]} {where[1].upper()}" in report.table()


def test_perturbed_expert_weight_is_located(exported, tiny_checkpoint, tmp_path):
    """One layer's MoE expert weights nudged by 1% in the ONNX weights file: layer 1 MoE, not before."""
    good = exported(validation_outputs=True)
    folder = tmp_path / "perturbed"
    shutil.copytree(good.parent, folder)
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    init = next(t for t in model.graph.initializer if t.name == "model.layers.1.mlp.output_linear.weight")
    info = {e.key: e.value for e in init.external_data}
    offset, length = int(info["offset"]), int(info["length"])
    with open(folder / DATA_NAME, "r+b") as f:
        f.seek(offset)
        weights = np.frombuffer(f.read(length), dtype=np.float32).copy()
        weights *= 1 + 0.01 * np.random.default_rng(0).standard_normal(weights.shape).astype(np.float32)
        f.seek(offset)
        f.write(weights.tobytes())
    with pytest.raises(ExportError, match="model.onnx.data differs from the file export.json describes"):
        validate_export(tiny_checkpoint[0], onnx=folder / "model.onnx", **FAST)  # refused before any case runs
    manifest = read_manifest(folder)  # as if exported so: the validator must then locate the damage
    dataclasses.replace(manifest, files={**manifest.files, **file_records(folder, [DATA_NAME])}).write(folder)
    report = validate_export(tiny_checkpoint[0], onnx=folder / "model.onnx", **FAST)
    assert not report
    step = first_failure(report)
    assert step.first_divergence == Divergence(1, "moe", step.first_divergence.rel_error)
    errors = {(e["layer"], e["block"]): e["rel_error"] for e in step.sub_block_errors}
    assert errors[(1, "moa")] < 1e-5 < errors[(1, "moe")]


def test_polygraphy_reference_passes_polygraphy(exported, tiny_checkpoint, tmp_path):
    from polygraphy.comparator import RunResults

    onnx_path = exported()
    validate_export(tiny_checkpoint[0], onnx=onnx_path, polygraphy_dir=tmp_path, **FAST)
    results = RunResults.load(str(tmp_path / "reference.json"))
    assert results[0][0] == "eager-fp32" and "logits" in results[0][1][0]
    polygraphy = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")
    assert polygraphy, "the polygraphy command comes with the polygraphy package"
    command = [polygraphy, "run", str(onnx_path), "--onnxrt",
               "--load-inputs", str(tmp_path / "inputs.json"), "--load-outputs", str(tmp_path / "reference.json"),
               "--atol", "1e-4", "--rtol", "1e-3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASSED" in done.stdout + done.stderr


def test_bad_input(exported, tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        validate_export(tmp_path / "nowhere", onnx=exported(), **FAST)
    with pytest.raises(ExportError, match="no ONNX model at .*missing.onnx"):
        validate_export(tiny_checkpoint[0], onnx=tmp_path / "missing.onnx", **FAST)
    with pytest.raises(InputError, match="nothing to validate"):
        validate_export(tiny_checkpoint[0], **FAST)
    other = tmp_path / "other"
    from tests.conftest import CONFIGS, make_model

    make_model(CONFIGS["tiny"].replace(num_hidden_layers=3)).save_pretrained(other)
    with pytest.raises(InputError,
                       match="different model than the checkpoint.*num_hidden_layers: checkpoint 3, ONNX 2"):
        validate_export(other, onnx=exported(), **FAST)


def test_engine_without_tensorrt_fails_the_report(exported, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """An engine asked for but unable to run here must not let the run pass on the ONNX alone (a CI gate)."""
    from engines.manifest import write_manifest
    from tests.engines.test_manifest import make_manifest

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # also on a machine that has TensorRT
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    write_manifest(engine, make_manifest())
    report = validate_export(tiny_checkpoint[0], onnx=exported(), engine=engine, **FAST)
    trt = report.backends[-1]
    assert trt.name == "tensorrt" and not trt.available and "tensorrt is not installed" in trt.reason
    assert report.backends[0].passed and not report
    assert "FAIL (tensorrt could not run)" in report.table()
    only_engine = validate_export(tiny_checkpoint[0], engine=engine, **FAST)
    assert not only_engine and "no backend could run" in only_engine.table()
    args = ["validate", str(tiny_checkpoint[0]), "--onnx", str(exported()), "--engine", str(engine),
            "--decode-steps", "1", "--long-context", "0", "--generation-tokens", "4"]
    assert main(args) == 2
    assert "validation is incomplete" in capsys.readouterr().err


def test_cli_exit_codes(exported, tiny_checkpoint, tmp_path, capsys):
    args = ["validate", str(tiny_checkpoint[0]), "--onnx", str(exported()), "--decode-steps", "1",
            "--long-context", "0", "--generation-tokens", "4", "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    assert "validation: PASS" in capsys.readouterr().out and json.loads((tmp_path / "r.json").read_text())["passed"]
    assert main(args + ["--tolerance", "logits_atol=1e-12", "--tolerance", "logits_rtol=0"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "do not match the eager model" in captured.err
    assert main(args + ["--tolerance", "bogus=1"]) == 1
    assert "unknown tolerance 'bogus'" in capsys.readouterr().err
