"""Launch configurations as data: `engines/kernels/configs/*.json`, keyed by op, shape, dtype and device.

`configs/default.json` holds, per op, a table of T thresholds -> tiles used for every shape and device.
A device file `configs/<device name, spaces as _>.json` (the name `torch.cuda.get_device_name()` returns,
e.g. `NVIDIA_H200.json`) may add tuned entries:

    {"shapes": {"expert_map": {"E=8,N=11264,K=2048,dtype=bfloat16": {"32": {...tiles...}, "inf": {...}}}}}

K is the reduction width (D for expert_map, N for expert_reduce); N is the output width. An entry's tiles
table has the same form as the defaults: the first threshold >= T wins ("inf" closes every table).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from jetmoe.errors import ConfigError

CONFIG_DIR = Path(__file__).with_name("configs")
OPS = ("expert_map", "expert_reduce", "expert_reduce_sum", "align")
_DTYPE_NAMES = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}


def shape_key(E: int, N: int, K: int, dtype: Any) -> str:
    """'E=8,N=11264,K=2048,dtype=bfloat16': the key of a tuned entry (dtype a torch dtype or its name)."""
    name = _DTYPE_NAMES.get(str(dtype), str(dtype))
    return f"E={E},N={N},K={K},dtype={name}"


def device_file_name(device_name: str) -> str:
    return device_name.strip().replace(" ", "_") + ".json"


@functools.cache
def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"launch config file {path} is not valid JSON: {err}") from None


def _pick(table: dict, T: int, where: str) -> dict:
    def bound(key: str) -> float:
        try:
            return math.inf if key == "inf" else int(key)
        except ValueError:
            raise ConfigError(f"{where}: threshold {key!r} is not an integer or 'inf'") from None

    thresholds = sorted(table, key=bound)
    if not thresholds or bound(thresholds[-1]) != math.inf:
        raise ConfigError(f"{where}: a tiles table must end with an 'inf' threshold, got {thresholds}")
    return dict(table[next(key for key in thresholds if T <= bound(key))])


def get_config(op: str, T: int, E: int = 0, N: int = 0, K: int = 0, dtype: Any = None,
               device_name: str | None = None, config_dir: str | Path | None = None) -> dict:
    """The launch configuration (tiles, num_warps, num_stages) for `op` at T tokens.

    A tuned entry of the device's file for (E, N, K, dtype) wins; otherwise the default table.
    """
    if op not in OPS:
        raise ConfigError(f"unknown kernel op {op!r}; known: {OPS}")
    folder = Path(config_dir) if config_dir is not None else CONFIG_DIR
    if device_name:
        path = folder / device_file_name(device_name)
        if path.is_file():
            entry = _read(path).get("shapes", {}).get(op, {}).get(shape_key(E, N, K, dtype))
            if entry is not None:
                return _pick(entry, T, f"{path} {op} {shape_key(E, N, K, dtype)}")
    path = folder / "default.json"
    table = _read(path).get(op)
    if table is None:
        raise ConfigError(f"{path} has no default table for op {op!r}")
    return _pick(table, T, f"{path} {op}")
