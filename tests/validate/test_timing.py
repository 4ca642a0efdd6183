"""The benchmark harness (validate/timing.py): interleaving, untimed hooks, and provenance."""

from __future__ import annotations

import json

import pytest

from validate.timing import alternate, paired_ratio, provenance, summary, write_results


def test_sides_alternate_with_the_order_rotated_and_hooks_untimed():
    trace = []

    def timer(fn):
        trace.append("start")
        fn()
        trace.append("stop")
        return 1.0

    fns = {name: (lambda name=name: trace.append(name)) for name in ("a", "b", "c")}
    samples = alternate(fns, reps=3, warmup=1, before={"b": lambda: trace.append("reset b")},
                        after={"a": lambda: trace.append("after a")}, timer=timer)
    assert samples == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}
    warm, timed = trace[:5], trace[5:]
    assert warm == ["a", "after a", "reset b", "b", "c"]
    order = [t for t in timed if t in fns]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # rotated: each side follows each other side
    for i, item in enumerate(timed):  # hooks only ever run outside a start/stop span
        if item.startswith(("reset", "after")):
            assert timed[:i].count("start") == timed[:i].count("stop")


def test_bad_repetitions_and_summaries():
    with pytest.raises(ValueError, match="reps must be >= 1"):
        alternate({"a": lambda: None}, reps=0)
    assert summary([0.001, 0.003, 0.002]) == {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0, "reps": 3}
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


def test_results_carry_their_provenance(tmp_path):
    path = write_results(tmp_path / "deep" / "r.json", {"provenance": provenance(), "x": 1})
    raw = json.loads(path.read_text())
    assert raw["x"] == 1 and raw["provenance"]["versions"]["torch"] and raw["provenance"]["git"]["head"]
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # written atomically, no temporary left
