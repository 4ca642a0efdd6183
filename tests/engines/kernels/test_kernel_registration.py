"""Registration of the Triton launchers as the CUDA kernels of the `jetmoe::` ops, and life without triton."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jetmoe import ops

ROOT = Path(__file__).resolve().parents[3]


def test_imports_without_triton_and_eager_ops_unchanged():
    script = (
        "import sys; sys.modules['triton'] = None\n"  # every `import triton` now fails
        "import torch, engines.kernels as k\n"
        "from engines.kernels import aot, launch_config\n"
        "assert not k.triton_available() and not k.register_cuda_kernels(force=True)\n"
        "from jetmoe import ops\n"
        "x, w = torch.randn(3, 8), torch.randn(4, 5, 8); idx = torch.tensor([[0, 1], [2, 3], [1, 0]])\n"
        "torch.testing.assert_close(ops.expert_map(x, idx, w), ops.expert_map_reference(x, idx, w))\n"
        "print(launch_config.get_config('expert_map', 1)['BLOCK_M'])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "16"


def test_cpu_tensors_keep_the_eager_ops():
    import engines.kernels as kernels

    if not torch.cuda.is_available():
        assert not kernels.register_cuda_kernels()  # no CUDA: nothing registered
    x, w = torch.randn(3, 8), torch.randn(4, 5, 8)
    idx = torch.tensor([[0, 1], [2, 3], [1, 0]])
    torch.testing.assert_close(ops.expert_map(x, idx, w), ops.expert_map_reference(x, idx, w))
    with pytest.raises(ops.InputError):  # the eager op still checks expert ids on CPU
        ops.expert_map(x, idx + 4, w)


@pytest.mark.gpu
def test_cuda_ops_dispatch_to_triton():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False")
    pytest.importorskip("triton", reason="needs triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set: the kernels are interpreted in this process")
    import engines.kernels as kernels
    from engines.kernels import dispatch

    assert kernels.register_cuda_kernels()
    gen = torch.Generator().manual_seed(0)
    T, D, N, E, K = 37, 256, 192, 8, 2
    x = torch.randn(T, D, generator=gen).cuda().bfloat16()
    idx = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)]).cuda()
    w = (torch.randn(E, N, D, generator=gen) / D**0.5).cuda().bfloat16()
    calls = []
    original = dispatch.align_by_expert
    dispatch.align_by_expert = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        y = ops.expert_map(x, idx, w)
    finally:
        dispatch.align_by_expert = original
    assert calls, "jetmoe::expert_map on CUDA did not reach the Triton launcher"
    ref = ops.expert_map_reference(x.float(), idx, w.float())
    torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=2e-2)
    h = torch.randn(T, K, N // 2, generator=gen).cuda().bfloat16()
    gates = torch.softmax(torch.randn(T, K, generator=gen), -1).cuda().bfloat16()
    wr = (torch.randn(E, D, N // 2, generator=gen) / N**0.5).cuda().bfloat16()
    bias = torch.randn(D, generator=gen).cuda().bfloat16()
    z = ops.expert_reduce(h, idx, gates, wr, bias)
    ref = ops.expert_reduce_reference(h.float(), idx, gates.float(), wr.float(), bias.float())
    torch.testing.assert_close(z.float(), ref, atol=2e-2, rtol=2e-2)


def test_model_through_the_kernels_matches_eager():
    """The tiny model with the launchers registered as the ops' CPU kernels (interpreted, in a subprocess so
    the registration does not leak into other tests) gives eager's logits: MoA and MoE, prefill and decode."""
    pytest.importorskip("triton", reason="needs triton (interpreted on CPU)")
    script = (
        "import torch, engines.kernels as k\n"
        "from jetmoe import JetMoeConfig, JetMoeForCausalLM, KVCache, ops\n"
        "from jetmoe.random_weights import init_random_\n"
        "calls = []\n"
        "def m(x, i, w): calls.append('map'); return k._expert_map_cuda(x, i, w)\n"
        "def r(h, i, g, w, b): calls.append('reduce'); return k._expert_reduce_cuda(h, i, g, w, b)\n"
        "torch.library.register_kernel('jetmoe::expert_map', 'cpu')(m)\n"
        "torch.library.register_kernel('jetmoe::expert_reduce', 'cpu')(r)\n"
        "model = JetMoeForCausalLM(JetMoeConfig.from_preset('tiny')); init_random_(model, 3); model.eval()\n"
        "ids = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(0))\n"
        "def run():\n"
        "    out = model(ids[:, :5], use_cache=True)\n"
        "    step = model(ids[:, 5:], past_key_values=KVCache(out.past_key_values.to_tuple()), use_cache=True)\n"
        "    return out.logits, step.logits\n"
        "with torch.no_grad():\n"
        "    a = run()\n"
        "    assert calls.count('map') == calls.count('reduce') == 8, calls  # 2 blocks x (MoA + MoE) x 2 calls\n"
        "    with ops.expert_map.set_kernel_enabled('cpu', False), \\\n"
        "            ops.expert_reduce.set_kernel_enabled('cpu', False):\n"
        "        b = run()\n"
        "for x, y in zip(a, b):\n"
        "    torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)\n"
        "print('max diff', max(float((x - y).abs().max()) for x, y in zip(a, b)))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
