"""The real `tensorrt.plugin` (QDP) Python sources, fetched with pip from PyPI's `tensorrt-cu13-bindings` wheel.

    sources = qdp_sources()   # .../tensorrt_bindings (its plugin/*.py), or pytest.skip if the index is unreachable

Used by tests/engines/test_qdp_sources.py through the `qdp_source_dir` fixture (tests/engines/conftest.py).
JETMOE_TRT_PLUGIN_SRC=<an unpacked tensorrt_bindings folder> still overrides the download.

The wheel is pinned (version and sha256: a moved release fails loudly instead of changing what is tested) and
kept in a cache folder, $JETMOE_WHEEL_CACHE or ~/.cache/jetmoe-trt/wheels, so only the first run downloads
(1.26 MB, ~3 s). The cp312 manylinux wheel is asked for whatever Python runs the tests: only its pure-Python
plugin/*.py files are used, and they are the same in every wheel of a release. The test skips only when the
package index cannot be reached (probed first, the reason in the skip message); a pip failure with a reachable
index, or a different sha256, fails the test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

PACKAGE = "tensorrt-cu13-bindings"
VERSION = "11.4.0.106"
WHEEL = f"tensorrt_cu13_bindings-{VERSION}-cp312-none-manylinux_2_28_x86_64.whl"
SHA256 = "5fc7a6c412881f7212030893bd5531b1a0ff415c72c7678dfe4ead7a7765b38d"
DEFAULT_INDEX = "https://pypi.org/simple"


def cache_dir() -> Path:
    return Path(os.environ.get("JETMOE_WHEEL_CACHE", Path.home() / ".cache" / "jetmoe-trt" / "wheels"))


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def _probe(url: str, timeout: float = 15.0) -> str | None:
    """None if the index answers for the package, else the reason."""
    try:
        with urllib.request.urlopen(f"{url}/{PACKAGE}/", timeout=timeout) as response:
            response.read(1)
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    return None


def fetch_wheel(cache: Path) -> Path:
    wheel = cache / WHEEL
    if not wheel.is_file():
        reason = _probe(index_url())
        if reason is not None:
            pytest.skip(f"the package index {index_url()} cannot be reached ({reason}): cannot fetch {PACKAGE} "
                        f"{VERSION} for the QDP sources")
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "312",
             "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--dest", str(cache),
             f"{PACKAGE}=={VERSION}"], capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0 or not wheel.is_file():
            pytest.fail(f"pip download {PACKAGE}=={VERSION} failed with the index reachable:\n{done.stderr[-2000:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != SHA256:
        pytest.fail(f"{wheel} has sha256 {digest}, expected {SHA256}: delete it, or update the pin on purpose")
    return wheel


def qdp_sources(cache: Path | None = None) -> Path:
    """Folder `tensorrt_bindings` with the wheel's __init__.py and plugin/*.py (not the compiled .so)."""
    override = os.environ.get("JETMOE_TRT_PLUGIN_SRC")
    if override:
        return Path(override)
    cache = cache or cache_dir()
    wheel = fetch_wheel(cache)
    root = cache / f"{PACKAGE}-{VERSION}-sources"
    target = root / "tensorrt_bindings"
    if not (target / "plugin" / "_lib.py").is_file():
        tmp = root.with_name(root.name + f".tmp{os.getpid()}")
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith("tensorrt_bindings/") and name.endswith(".py"):
                    archive.extract(name, tmp)
        if root.exists():  # another process unpacked it meanwhile
            shutil.rmtree(tmp)
        else:
            tmp.rename(root)
    return target
