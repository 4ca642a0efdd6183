"""`jetmoe bench` on the tiny checkpoint: every backend timed, tokens/s consistent with the medians."""

from __future__ import annotations

import json

import pytest

from jetmoe import CheckpointError, InputError
from jetmoe.cli import main
from validate.bench import bench


def test_bench_times_every_backend(exported, tiny_checkpoint, tmp_path, capsys):
    report = bench(tiny_checkpoint[0], exported(), batches=(1, 2), prompt_tokens=8, context=8, reps=2, warmup=1)
    names = {t.backend for t in report.timings}
    assert {"eager", "onnxruntime"} <= names
    assert "tensorrt" in report.unavailable
    assert len(report.timings) == len(names) * 2 * 2  # backends x cases x batches
    for t in report.timings:
        produced = t.batch * (t.tokens if t.case == "prefill" else 1)
        assert t.median_ms > 0 and abs(t.tokens_per_s - produced / (t.median_ms / 1e3)) < 1e-6 * t.tokens_per_s
    assert main(["bench", str(tiny_checkpoint[0]), "--onnx", str(exported()), "--reps", "1", "--prompt-tokens",
                 "4", "--context", "4", "--no-hf", "--json", str(tmp_path / "b.json")]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert {t["backend"] for t in json.loads((tmp_path / "b.json").read_text())["timings"]} == {"eager", "onnxruntime"}


def test_bench_bad_input(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError):
        bench(tmp_path / "missing")
    with pytest.raises(InputError, match="fit max_position_embeddings=512"):
        bench(tiny_checkpoint[0], context=600)
