"""The benchmark harness: the one timing loop, provenance, a quiet-machine wait and atomic JSON results.

Used by `jetmoe bench` (validate/bench.py), every script in benchmarks/ and scripts/gpu_check.py.

    samples = alternate({"ours": run_a, "hf": run_b}, reps=20, warmup=3, cooldown_s=0.1)
    ratio = statistics.median(samples["ours"]) / statistics.median(samples["hf"])
    write_results(path, {"provenance": provenance(), "results": ...})

Machines here are shared and noisy, so sides are never timed in separate runs: `alternate` interleaves them in
one loop (the order rotated every repetition, so each side follows each other side equally often), and results
are reported as ratios of medians (and medians of back-to-back pair ratios).
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jetmoe.fileio import atomic_write_text

GiB = 2**30


def wall_time(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` takes on the host clock."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cuda_time(fn: Callable[[], object], event: Callable[[], object] | None = None) -> float:
    """Seconds one call of `fn` takes on the GPU: between a pair of CUDA events recorded on the current stream
    (work queued before the start event, e.g. an L2 flush, is not counted). `event` makes an event (tests)."""
    if event is None:
        import torch

        def event():
            return torch.cuda.Event(enable_timing=True)
    start, end = event(), event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def alternate(fns: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1, *,
              before: Mapping[str, Callable[[], object]] | None = None,
              after: Mapping[str, Callable[[], object]] | None = None, cooldown_s: float = 0.0,
              timer: Callable[[Callable[[], object]], float] = wall_time) -> dict[str, list[float]]:
    """Time every function `reps` times, interleaved, after `warmup` untimed rounds; seconds per call.

    `before[name]` / `after[name]` run untimed around each call of that side (a cache reset, an L2 flush);
    `cooldown_s` is an untimed pause before each timed call (ONNX Runtime's threads spin ~40-50 ms after a run
    and would slow whatever runs next on 2 cores); `timer` measures one call (default: host wall clock; the
    GPU check passes a CUDA-event timer).
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got {reps} and {warmup}")
    before, after = before or {}, after or {}
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            before.get(name, _nothing)()
            fns[name]()
            after.get(name, _nothing)()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            before.get(name, _nothing)()
            if cooldown_s:
                time.sleep(cooldown_s)
            samples[name].append(timer(fns[name]))
            after.get(name, _nothing)()
    return samples


def _nothing() -> None:
    return None


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, min and max in milliseconds."""
    return {"median_ms": 1e3 * statistics.median(seconds), "min_ms": 1e3 * min(seconds),
            "max_ms": 1e3 * max(seconds), "reps": len(seconds)}


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-repetition ratios a/b (each pair ran back to back, so slow drift cancels)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


# ---- the machine --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall s, CPU s busy on the whole machine, CPU s of this process): for the load others put on the machine."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    own = os.times()
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return time.monotonic(), busy, own.user + own.system


def others_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Average number of cores that other processes kept busy between two snapshots."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall if wall > 0 else 0.0


def wait_quiet(max_wait_s: float, threshold: float = 0.3, window_s: float = 3.0) -> dict[str, Any]:
    """Wait (up to max_wait_s) for a window in which other processes use < threshold cores on average."""
    start = time.monotonic()
    while True:
        snapshot = cpu_snapshot()
        time.sleep(window_s)
        load = others_cores(snapshot, cpu_snapshot())
        waited = time.monotonic() - start
        if load < threshold or waited >= max_wait_s:
            return {"waited_s": waited, "others_cores_last_window": load, "quiet": load < threshold}


def proc_status() -> dict[str, int]:
    """This process's VmRSS, VmHWM (peak), RssAnon and RssFile in bytes (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Growth:
    """Wall time and RSS growth (after, and peak during) of what runs inside the block, in this process."""

    def __enter__(self) -> Growth:
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.peak_reset = True
        except OSError:
            self.peak_reset = False
        self.before = proc_status()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        self.seconds = time.perf_counter() - self.start
        after = proc_status()
        self.result = {"seconds": self.seconds, "rss_growth_gib": (after["VmRSS"] - self.before["VmRSS"]) / GiB,
                       "peak_growth_gib": (after["VmHWM"] - self.before["VmRSS"]) / GiB if self.peak_reset else None,
                       "rss_after_gib": after["VmRSS"] / GiB, "peak_gib": after["VmHWM"] / GiB}
        return False


def run_measured(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> dict[str, Any]:
    """Run `cmd` under /usr/bin/time -v: wall seconds, peak RSS (GiB), exit status; its output kept in `log`."""
    import re

    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True, env=env,
                          check=False)
    seconds = time.perf_counter() - start
    log.write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": seconds,
            "max_rss_gib": int(rss.group(1)) * 1024 / GiB if rss else None,
            "stderr_tail": proc.stderr[-3000:] if proc.returncode else None}


# ---- provenance and results --------------------------------------------------------------------------------


def provenance(packages: tuple[str, ...] = ("torch", "numpy", "onnx", "onnxscript", "onnxruntime", "transformers",
                                            "triton", "tensorrt", "tensorrt_rtx")) -> dict[str, Any]:
    """Where and with what a result was measured: date, command, machine, package versions, git state."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in packages:
        try:
            versions[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            continue
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        except OSError:
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "versions": versions,
            "git": {"head": git("rev-parse", "HEAD"), "dirty": (git("status", "--short") or "").splitlines()}}


def add_harness_arguments(parser, default_out: Path) -> None:
    """The flags every benchmark script shares: --wait-quiet S and --out PATH (argparse parser)."""
    parser.add_argument("--wait-quiet", type=float, default=300, metavar="S",
                        help="before each timed case, wait up to S seconds for other processes to use < 0.3 cores "
                             "(shared machine; 0: do not wait)")
    parser.add_argument("--out", type=Path, help=f"JSON results path (default: {default_out}; --quick writes none "
                        "unless given)")


def write_results(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """Write a results JSON atomically (folders made as needed)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path
