"""Our plugin definitions through the REAL `tensorrt.plugin` Python sources (decorators and their validators),
with a stand-in for TensorRT's compiled core, which is not installable from PyPI.

The sources come from the pinned `tensorrt-cu13-bindings` 11.4.0.106 wheel on PyPI, fetched with pip into a cache
on first use (tests/engines/qdp_wheel.py); the test skips only when the package index cannot be reached, and says
so. JETMOE_TRT_PLUGIN_SRC=<an unpacked tensorrt_bindings folder> overrides the download. (TensorRT-RTX is no
substitute: the `tensorrt_rtx/plugin/*.py` of tensorrt-rtx-cu12 1.7.1 are stubs importing
`tensorrt_rtx_bindings.plugin`, which its bindings wheel does not contain.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from qdp_wheel import qdp_sources

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import sys, types, importlib

class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _Meta(name, (Anything,), {})
        setattr(cls, name, sub)
        return sub

class Anything(metaclass=_Meta):
    def __init__(self, *a, **k): pass
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything()
    def __call__(self, *a, **k): return Anything()
    def __iter__(self): return iter(())
    def __int__(self): return 0
    def __index__(self): return 0

trt = types.ModuleType("tensorrt")
def _mod_getattr(name):
    if name.startswith("__"):
        raise AttributeError(name)
    sub = _Meta(name, (Anything,), {})
    setattr(trt, name, sub)
    return sub
trt.__getattr__ = _mod_getattr
trt.__version__ = "11.4.0.106"
sys.modules["tensorrt"] = trt
pkg = types.ModuleType("tensorrt_bindings"); pkg.__path__ = [sys.argv[1]]
sys.modules["tensorrt_bindings"] = pkg
plugin = importlib.import_module("tensorrt_bindings.plugin")
sys.modules["tensorrt.plugin"] = plugin
trt.plugin = plugin
import tensorrt.plugin as trtp
from engines import plugins
plugins.register_plugins()
from tensorrt_bindings.plugin._lib import QDP_REGISTRY
for pid, d in QDP_REGISTRY.items():
    print(pid, d.input_tensor_names, dict(d.input_attrs), d.num_outputs, "aot attrs", d.aot_impl_attr_names,
          "impl attrs", d.impl_attr_names, "tactic", d.expects_tactic, "autotune attrs", d.autotune_attr_names)
plugins._registered = False
plugins.register_plugins()  # idempotent even when the module flag is lost
print("idempotent ok")
from tensorrt_bindings.plugin._autotune import _gen_onesided_combinations
fns = plugins.define(trtp)
for name in ("expert_map", "expert_reduce"):
    n_in = len(plugins.PLUGINS[name].inputs)
    combos = fns[name]["autotune"](*[None] * n_in, ())
    for c in combos:
        print(name, "tactics", c._tactics, [tuple(t) for t in _gen_onesided_combinations(c.io_types)])
    with plugins.building("jit"):
        combos = fns[name]["autotune"](*[None] * n_in, ())
    print(name, "jit tactics", [[comb.tactics for comb in c._get_combinations()] for c in combos])
'''


def test_real_qdp_decorators_accept_our_plugins(qdp_source_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(qdp_source_dir)], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    print(done.stdout)
    assert lines[0].startswith("jetmoe::expert_map ['x', 'expert_idx', 'weight'] {} 1 aot attrs [] impl attrs [] "
                               "tactic False")  # impl takes no tactic
    assert lines[1].startswith("jetmoe::expert_reduce ['h', 'expert_idx', 'gates', 'weight', 'bias'] {} 1")
    assert "idempotent ok" in lines
    assert "('BF16', 'INT64', 'BF16', 'BF16')" in done.stdout
    assert "('FP32', 'INT32', 'FP32', 'FP32', 'FP32', 'FP32')" in done.stdout
    assert "expert_map tactics [1, 2, 3]" in done.stdout
    assert "expert_reduce jit tactics [[None, None, None], [None, None, None]]" in done.stdout


def test_an_unreachable_index_skips_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("JETMOE_TRT_PLUGIN_SRC", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on port 9
    with pytest.raises(pytest.skip.Exception, match=r"index http://127\.0\.0\.1:9/simple cannot be reached"):
        qdp_sources(tmp_path / "empty-cache")
