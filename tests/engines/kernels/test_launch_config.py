"""Launch configurations as data: the shipped default and a device file's tuned entries (no triton needed)."""

from __future__ import annotations

import json

import pytest
import torch

from engines.kernels.launch_config import OPS, device_file_name, get_config, shape_key
from jetmoe.errors import ConfigError

TILE_KEYS = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}


def test_default_covers_every_op_and_size():
    for op in OPS:
        for T in (0, 1, 16, 33, 2048, 10**7):
            cfg = get_config(op, T, 8, 11264, 2048, torch.bfloat16, "Unknown GPU")
            assert cfg["num_warps"] >= 1
            if op in ("expert_map", "expert_reduce"):
                assert TILE_KEYS <= set(cfg) and cfg["BLOCK_M"] >= 16 and not cfg["BLOCK_M"] & (cfg["BLOCK_M"] - 1)
    assert get_config("expert_map", 1)["BLOCK_M"] == 16  # decode: the smallest M tile
    assert get_config("expert_map", 4096)["BLOCK_M"] == 64


def test_device_file_overrides_for_its_shape_only(tmp_path):
    (tmp_path / "default.json").write_text(json.dumps({"expert_map": {"inf": {"BLOCK_M": 64, "BLOCK_N": 64}}}))
    key = shape_key(8, 11264, 2048, torch.bfloat16)
    assert key == "E=8,N=11264,K=2048,dtype=bfloat16"
    tuned = {"shapes": {"expert_map": {key: {"16": {"BLOCK_M": 16, "BLOCK_N": 128}, "inf": {"BLOCK_M": 128}}}}}
    (tmp_path / device_file_name("NVIDIA H200")).write_text(json.dumps(tuned))
    assert device_file_name("NVIDIA H200") == "NVIDIA_H200.json"
    get = lambda T, N=11264, dev="NVIDIA H200": get_config("expert_map", T, 8, N, 2048, torch.bfloat16, dev,  # noqa
                                                           config_dir=tmp_path)
    assert get(1) == {"BLOCK_M": 16, "BLOCK_N": 128}
    assert get(16)["BLOCK_M"] == 16 and get(17)["BLOCK_M"] == 128
    assert get(1, N=5632)["BLOCK_M"] == 64  # another shape: the default
    assert get(1, dev="NVIDIA H100")["BLOCK_M"] == 64  # another device: the default


def test_bad_tables_are_config_errors(tmp_path):
    (tmp_path / "default.json").write_text(json.dumps({"expert_map": {"16": {"BLOCK_M": 16}}}))
    with pytest.raises(ConfigError, match="inf"):
        get_config("expert_map", 1, config_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown kernel op"):
        get_config("expert_mop", 1)
    with pytest.raises(ConfigError, match="no default table"):
        get_config("align", 1, config_dir=tmp_path)
