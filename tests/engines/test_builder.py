"""The builder's TensorRT calls whose return values report failures, against stand-ins that behave as the
TensorRT 11 Python bindings do (python/src/infer/pyCore.cpp): the timing cache (refused from another device,
unreadable, absent after the build), optimization profiles (set_shape raises, add_optimization_profile -1) and
the progress monitor (called from several builder threads)."""

from __future__ import annotations

import logging
import threading
import types

import pytest

from engines.builder import PhaseLog, add_profiles, load_timing_cache, progress_monitor, save_timing_cache
from engines.profiles import make_profiles, resolve_limits
from jetmoe.config import JetMoeConfig
from jetmoe.errors import EngineError
from jetmoe.io_names import IoNames


class FakeCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self):
        return memoryview(self.data + b"+timed")


class FakeConfig:
    """create_timing_cache: None for bytes that are not a cache; set_timing_cache: False for a cache made on
    another device (ignore_mismatch=False), as IBuilderConfig does."""

    def __init__(self, device: str = "H200", refuse_fresh: bool = False, lose_cache: bool = False) -> None:
        self.device, self.refuse_fresh, self.lose_cache = device, refuse_fresh, lose_cache
        self.attached = None

    def create_timing_cache(self, data: bytes):
        return None if data.startswith(b"garbage") else FakeCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        ok = (not cache.data and not self.refuse_fresh) or cache.data.startswith(self.device.encode())
        if ok:
            self.attached = cache
        return ok

    def get_timing_cache(self):
        return None if self.lose_cache else self.attached


@pytest.fixture
def said(caplog, monkeypatch):
    """The builder's log lines, as said (also after a CLI call in this process stopped propagation)."""
    monkeypatch.setattr(logging.getLogger("engines"), "propagate", True)
    caplog.set_level(logging.INFO, logger="engines.builder")

    class Said:
        def __getitem__(self, i):
            return self.lines()[i]

        def __len__(self):
            return len(self.lines())

        def __eq__(self, other):
            return self.lines() == other

        def lines(self):
            return [("warning: " if r.levelno >= logging.WARNING else "") + r.getMessage() for r in caplog.records]

    return Said()


def test_timing_cache_from_this_device_is_reused_and_updated(tmp_path, said):
    path = tmp_path / "trt.cache"
    path.write_bytes(b"H200 tactics")
    config = FakeConfig()
    cache = load_timing_cache(config, path)
    assert config.attached is cache and cache.data == b"H200 tactics"
    assert save_timing_cache(config, path)
    assert path.read_bytes() == b"H200 tactics+timed"
    assert said == [f"timing cache: 12 bytes from {path}", f"timing cache: 18 bytes to {path}"]


def test_timing_cache_from_another_device_is_replaced_with_a_warning(tmp_path, said):
    path = tmp_path / "trt.cache"
    path.write_bytes(b"H100 tactics")
    config = FakeConfig("H200")
    cache = load_timing_cache(config, path)
    assert config.attached is cache and cache.data == b""  # a fresh cache, not the refused one
    assert said[0] == (f"warning: timing cache {path} was made on another device or TensorRT version; starting a "
                       f"fresh one (saving will replace the file)")
    save_timing_cache(config, path)
    assert path.read_bytes() == b"+timed"


def test_unreadable_or_missing_timing_cache_starts_fresh(tmp_path, said):
    path = tmp_path / "trt.cache"
    path.write_bytes(b"garbage")
    assert load_timing_cache(FakeConfig(), path).data == b""
    assert "is not a timing cache" in said[0]
    assert load_timing_cache(FakeConfig(), tmp_path / "none.cache").data == b""
    assert said[1].endswith("none.cache is empty or missing; starting a fresh one")
    config = FakeConfig()
    load_timing_cache(config, None)  # no --timing-cache: a cache for this build only, silently
    assert config.attached is not None and len(said) == 2


def test_no_timing_cache_after_the_build_writes_nothing(tmp_path, said):
    path = tmp_path / "trt.cache"
    path.write_bytes(b"H200 old")
    config = FakeConfig(lose_cache=True)
    load_timing_cache(config, path)
    assert not save_timing_cache(config, path)
    assert path.read_bytes() == b"H200 old" and said[-1].startswith("warning: TensorRT returned no timing cache")


def test_a_refused_fresh_timing_cache_is_an_error(tmp_path, said):
    with pytest.raises(EngineError, match="refused a fresh, empty timing cache"):
        load_timing_cache(FakeConfig(refuse_fresh=True), None)


# ---- optimization profiles ---------------------------------------------------------------------------------


class FakeProfile:
    def __init__(self, bad_input: str | None) -> None:
        self.bad_input, self.shapes = bad_input, {}

    def set_shape(self, name, lo, opt, hi):
        if name == self.bad_input:  # the binding raises where setDimensions returns false
            raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
        self.shapes[name] = (lo, opt, hi)


class FakeBuilderConfig:
    def __init__(self, bad_input: str | None = None, refuse: int | None = None) -> None:
        self.bad_input, self.refuse, self.profiles = bad_input, refuse, []

    def create_optimization_profile(self):
        return FakeProfile(self.bad_input)

    def add_optimization_profile(self, profile) -> int:
        if len(self.profiles) == self.refuse:
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1


@pytest.fixture
def profiles():
    config = JetMoeConfig.from_preset("tiny")
    return make_profiles(config, IoNames(config.num_hidden_layers), resolve_limits(config, max_batch=2, max_seq=64))


def test_profiles_are_added_in_order(profiles):
    fake = FakeBuilderConfig()
    add_profiles(fake, fake, profiles)
    assert [p.shapes for p in fake.profiles] == [p.shapes for p in profiles]


def test_refused_profiles_are_errors_naming_them(profiles):
    fake = FakeBuilderConfig(refuse=1)
    with pytest.raises(EngineError, match="refused the decode optimization profile .*returned -1, expected index 1"):
        add_profiles(fake, fake, profiles)
    fake = FakeBuilderConfig(bad_input="attention_mask")
    with pytest.raises(EngineError, match="refused the prefill profile's shapes for attention_mask .*inconsistent"):
        add_profiles(fake, fake, profiles)


# ---- progress monitor ----------------------------------------------------------------------------------------


def test_phase_log_from_many_threads_keeps_every_phase():
    """TensorRT calls the monitor from several internal threads, with phase names reused: every start is
    matched by its finish, nothing raises, lines are whole."""
    lines: list[str] = []
    ticks = iter(range(10**6))
    log = PhaseLog(lines.append, clock=lambda: 2.0 * next(ticks))  # every phase "takes" > 1 s
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for _ in range(50):
            log.phase_start("Tactic timing", None if i % 2 else "Building", 3)
            assert log.step_complete("Tactic timing", 0)
            log.phase_finish("Tactic timing")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log._started == {}  # every start popped by a finish
    assert sum(line == "  Tactic timing (3 steps)" for line in lines) == 4 * 50  # top-level starts only
    assert sum(line.startswith("  Tactic timing: done in ") for line in lines) == 8 * 50


def test_ctrl_c_in_a_callback_cancels_the_build():
    def say(line):
        raise KeyboardInterrupt

    log = PhaseLog(say)
    log.phase_start("Building", None, 2)  # does not raise out of the (noexcept) callback
    assert log.cancelled and log.step_complete("Building", 0) is False


def test_progress_monitor_wraps_the_phase_log():
    fake_trt = types.SimpleNamespace(IProgressMonitor=type("IProgressMonitor", (), {"__init__": lambda self: None}))
    lines: list[str] = []
    monitor = progress_monitor(fake_trt, lines.append)
    monitor.phase_start("Building", None, 1)
    assert monitor.step_complete("Building", 0) is True
    monitor.phase_finish("Building")
    assert lines == ["  Building (1 steps)"] and isinstance(monitor.log, PhaseLog)
