"""Our plugin definitions through the REAL `tensorrt.plugin` Python sources (decorators and their validators),
with a stand-in for TensorRT's compiled core, which is not installable from PyPI.

Needs an unpacked `tensorrt-cu13-bindings` wheel (PyPI, pure Python + .so; only the Python is used):
    pip download --no-deps -d /tmp/trtwheel tensorrt-cu13-bindings && (cd /tmp/trtwheel && unzip -q -o *.whl)
    JETMOE_TRT_PLUGIN_SRC=/tmp/trtwheel/tensorrt_bindings pytest tests/engines/test_qdp_sources.py
Skipped without it. Checked with 11.4.0.106.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = os.environ.get("JETMOE_TRT_PLUGIN_SRC", "/tmp/trtwheel/tensorrt_bindings")

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


def test_real_qdp_decorators_accept_our_plugins():
    if not (Path(SOURCES) / "plugin" / "_lib.py").is_file():
        pytest.skip(f"no unpacked tensorrt-cu13-bindings wheel at {SOURCES} (set JETMOE_TRT_PLUGIN_SRC)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, SOURCES], cwd=ROOT, env=env, check=False, capture_output=True,
                          text=True, timeout=300)
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
