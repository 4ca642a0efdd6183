"""The CPU-only parts of scripts/gpu_check.py: the plan (--dry-run), the table/JSON writers, and the HF model
it builds from our state dict (meta device + assign) decoding like ours. No numbers are measured here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from jetmoe import JetMoeConfig, JetMoeForCausalLM
from jetmoe.random_weights import init_random_

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_writes_the_plan(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--dry-run"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["kernels"] == [] and report["e2e"] is None
    plan = report["plan"]
    assert len(plan) == 16 and {c["T"] for c in plan} == {1, 4, 16, 2048}
    assert {(c["op"], c["N"]) for c in plan} == {("expert_map", 11264), ("expert_reduce", 5632),
                                                 ("expert_map", 2048), ("expert_reduce", 2048)}
    assert report["summary"]["all_correct"] is None and report["summary"]["meets"]["e2e_speedup_vs_hf"] is None
    out = capsys.readouterr().out
    assert "nothing measured" in out and "expert_reduce" in out


def test_tables_show_missing_values_as_dashes(gpu_check):
    rows = [dict(op="expert_map", block="moe", N=11264, T=1, ok=None)]
    lines = gpu_check.kernel_table(rows).splitlines()
    assert len(lines) == 3 and len(lines[2]) == len(lines[0]) and lines[2].split()[-1] == "-"
    text = gpu_check.e2e_table({"ours_triton_ms": None, "hf_ms": None})
    assert "HF transformers eager" in text and "-" in text.splitlines()[-1]


def test_no_gpu_is_a_clear_exit(gpu_check, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_hf_model_from_our_state_dict_decodes_like_ours(gpu_check, transformers):
    config = JetMoeConfig.from_preset("tiny")
    ours = JetMoeForCausalLM(config)
    init_random_(ours, 7)
    ours.eval()
    hf, notes = gpu_check.build_hf(ours, config, device="cpu")
    assert notes["built"] == "meta+assign" and not notes["missing_keys"] and not notes["unexpected_keys"], notes
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab_size, (1, 12), generator=gen)
    token = torch.randint(0, config.vocab_size, (1, 1), generator=gen)
    with torch.no_grad():
        ours_step = gpu_check.decode_step(ours, prompt, token)
        hf_step, restore = gpu_check.hf_decode_step(hf, prompt, token)
        a = ours_step().logits
        restore()
        b = hf_step().logits
        restore()
        c = hf_step().logits  # the restored cache gives the same step again
        assert torch.equal(ours_step().logits, a)
    print("max |ours - hf|", float((a - b).abs().max()))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.equal(b, c)


def test_run_case_checks_every_kernel_at_small_widths():
    """`run_case`'s correctness path (inputs, launcher, reference, byte/flop accounting) on CPU with the
    kernels interpreted and small widths; the timer is replaced by NaN, so no speed is measured or shown."""
    pytest.importorskip("triton", reason="needs triton (interpreted on CPU)")
    import os
    import subprocess
    import sys

    root = SCRIPT.parents[1]
    script = (
        "import importlib.util, math, torch\n"
        f"spec = importlib.util.spec_from_file_location('gpu_check', {str(SCRIPT)!r})\n"
        "g = importlib.util.module_from_spec(spec); spec.loader.exec_module(g)\n"
        "g.DEVICE, g.D_MODEL = 'cpu', 40\n"
        "g.cuda_time_ms = lambda fn, iters, warmup=0, between=None: (fn(), float('nan'))[1]\n"
        "gen = torch.Generator().manual_seed(0)\n"
        "for T in (1, 4, 2048):\n"
        "    g.DECODE_T = (1, 4)\n"
        "    for op, N in (('expert_map', 24), ('expert_reduce', 12)):\n"
        "        case = dict(op=op, block='moe', N=N, T=T if T < 2048 else 40)\n"
        "        if T == 2048: g.DECODE_T = ()\n"
        "        r = g.run_case(case, 1, 1.0, 1.0, gen)\n"
        "        assert r['ok'] and r['max_err'] < 0.05, r\n"
        "        assert r['weight_bytes'] == r['experts_hit'] * N * 40 * 2, r\n"
        "        assert (r['bandwidth_fraction'] is None) == (T == 2048), r\n"
        "        print(op, T, r['max_err'], r['experts_hit'])\n"
        "print(g.kernel_table([r]))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
