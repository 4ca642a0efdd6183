"""The pure parts of engines/driver_launch.py (argument packing, PTX version rewriting) and its error where no
CUDA driver is present. The launches themselves run in scripts/gpu_check.py on a GPU."""

from __future__ import annotations

import ctypes

import pytest

from engines.driver_launch import Driver, DriverError, pack_args, with_ptx_version


def test_pack_args_is_qdp_launch_order_with_typed_values():
    params, keep = pack_args([0x7F00_0000_1000, 0x7F00_0000_2000], [6, 2, 37, 24, 8], [0x7F00_0000_3000])
    assert len(params) == len(keep) == 8
    addresses = [params[i] for i in range(8)]
    assert [ctypes.c_uint64.from_address(a).value for a in addresses[:2]] == [0x7F00_0000_1000, 0x7F00_0000_2000]
    assert [ctypes.c_int32.from_address(a).value for a in addresses[2:7]] == [6, 2, 37, 24, 8]
    assert ctypes.c_uint64.from_address(addresses[7]).value == 0x7F00_0000_3000
    assert [ctypes.sizeof(v) for v in keep] == [8, 8, 4, 4, 4, 4, 4, 8]  # CUdeviceptr, int32 extras, CUdeviceptr


def test_pack_args_refuses_an_extra_beyond_int32():
    with pytest.raises(ValueError, match="does not fit in int32"):
        pack_args([1], [2**31], [2])


def test_with_ptx_version_rewrites_only_the_version_line():
    ptx = "//\n// comment .version 1.0\n.version 8.0\n.target sm_90a\n"
    assert with_ptx_version(ptx, "9.4") == "//\n// comment .version 1.0\n.version 9.4\n.target sm_90a\n"
    with pytest.raises(ValueError, match="no .version"):
        with_ptx_version(".target sm_90a\n", "8.0")


def test_a_missing_driver_is_one_clear_error():
    with pytest.raises(DriverError, match="no CUDA driver library"):
        Driver("libcuda-that-does-not-exist.so.1")
