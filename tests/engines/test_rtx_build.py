"""TensorRT-RTX engines built for real on a machine without a GPU (engines/builder.py, backend "tensorrt-rtx").

Deserialising an engine needs a GPU, so the checks stop at what the builder can see: the parsed network's inputs
and outputs (names and types) against export.json, the profiles the builder config holds (min past_seq 0), the
compute capabilities set, then the engine bytes and the manifest written beside them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest

from engines import builder
from engines.manifest import read_manifest
from export.exporter import export_checkpoint
from jetmoe.errors import EngineError, InputError
from tests.conftest import CONFIGS, make_model

MAX_BATCH, MAX_SEQ = 2, 64
TRT_TYPE = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16"}


class Said(logging.Handler):
    """The builder's log lines (its own handler: the CLI's logging setup stops propagation to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def build(onnx_path, engine_path, **options):
    logger, said = logging.getLogger("engines.builder"), Said()
    level = logger.level
    logger.addHandler(said)
    logger.setLevel(logging.INFO)
    try:
        options = {"max_batch": MAX_BATCH, "max_seq": MAX_SEQ, **options}
        manifest = builder.build_engine(onnx_path, engine_path, backend="tensorrt-rtx", **options)
    finally:
        logger.removeHandler(said)
        logger.setLevel(level)
    print("\n".join(said.lines))
    return manifest, said.lines


def check_engine(manifest, engine_path, said, dtype: str, targets: list[list[int]], rtx) -> None:
    data = engine_path.read_bytes()
    assert len(data) > 1_000_000 and hashlib.sha256(data).hexdigest() == manifest.engine_sha256
    assert read_manifest(engine_path) == manifest
    assert (manifest.backend, manifest.tensorrt_version, manifest.dtype) == ("tensorrt-rtx", rtx.__version__, dtype)
    assert manifest.compute_capabilities == targets and manifest.gpu_name == ""
    assert (manifest.dispatch, manifest.plugins, manifest.plugin_mode) == ("portable", {}, "none")
    # checked before the build: the network's I/O as export.json says (names and types) and the held profiles
    parsed = next(line for line in said if line.startswith("parsed:"))
    assert "inputs and outputs as export.json: input_ids INT64, attention_mask INT64" in parsed
    if manifest.task == "causal-lm":
        assert f"past_key_values.0.key {TRT_TYPE[dtype]}" in parsed
        decode = f"input_ids ((1, 1), ({MAX_BATCH}, 1), ({MAX_BATCH}, 1)), past_seq 0..{MAX_SEQ - 1}"
        assert f"profile decode held: {decode}" in said
        assert "profile prefill held: input_ids ((1, 1), " in " ".join(said)
    assert [p.name for p in manifest.profiles] == (["prefill", "decode"] if manifest.task == "causal-lm"
                                                   else ["forward"])
    assert not list(engine_path.parent.glob(".*jetmoe-tmp*"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])  # fp16: through the CLI (test_builder_cli.py)
def test_builds_the_tiny_portable_export(rtx, exported, dtype, tmp_path):
    engine = tmp_path / "model.engine"
    manifest, said = build(exported(dtype, dispatch="portable"), engine)
    check_engine(manifest, engine, said, dtype, [[8, 6]], rtx)


@pytest.fixture(scope="module")
def odd_export(tmp_path_factory):
    """name -> portable fp32 export of that odd config (odd widths; k = 1; k = 3 with E = 5)."""
    made = {}

    def get(name):
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            make_model(CONFIGS[name], seed=1).save_pretrained(folder / "ckpt")
            made[name] = export_checkpoint(folder / "ckpt", folder / "onnx", dispatch="portable")
        return made[name]
    return get


@pytest.mark.parametrize("name", ["odd", "k1", "k3"])
def test_builds_the_odd_configs_for_two_targets(rtx, odd_export, name, tmp_path):
    engine = tmp_path / "model.engine"
    manifest, said = build(odd_export(name), engine, compute_capability=("8.6", "12.0"))
    check_engine(manifest, engine, said, "fp32", [[8, 6], [12, 0]], rtx)


def test_refuses_a_plugin_export_in_one_line(exported, tmp_path):
    with pytest.raises(EngineError) as e:
        builder.build_engine(exported(), tmp_path / "model.engine", backend="tensorrt-rtx")
    message = str(e.value)
    assert "\n" not in message and "plugin dispatch" in message and "--dispatch portable" in message
    assert "TensorRT-RTX cannot run our plugins" in message
    assert not list(tmp_path.iterdir())


def test_refuses_targets_it_cannot_build_for(exported, tmp_path):
    portable = exported("fp32", dispatch="portable")
    with pytest.raises(InputError, match=r"compute capability '9.0' is not a TensorRT-RTX target; choose from 7.5"):
        builder.build_engine(portable, tmp_path / "model.engine", backend="tensorrt-rtx", compute_capability=("9.0",))
    with pytest.raises(InputError, match="--compute-capability is for --backend tensorrt-rtx"):
        builder.plan_build(portable, tmp_path / "model.engine", compute_capability=("8.6",))
    with pytest.raises(EngineError, match="a bf16 engine needs compute capability >= 8.0; asked for 8.6, 7.5"):
        builder.plan_build(exported("bf16", dispatch="portable"), tmp_path / "model.engine", backend="tensorrt-rtx",
                           compute_capability=("8.6", "7.5"))
    with pytest.raises(InputError, match="--timing-cache is for full TensorRT"):
        builder.build_engine(portable, tmp_path / "model.engine", backend="tensorrt-rtx",
                             timing_cache=tmp_path / "t.cache")
    assert not list(tmp_path.iterdir())


def test_an_enum_without_the_target_is_refused_by_name(rtx):
    class Config:
        num_compute_capabilities = 0

    with pytest.raises(EngineError, match=r"cannot target compute capability 9\.0; it knows 7\.5, 8\.0, 8\.6"):
        builder.set_compute_capabilities(rtx, Config(), ((8, 6), (9, 0)))


def test_a_network_whose_types_differ_from_export_json_is_refused_before_the_build(rtx, exported, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(exported("fp32", dispatch="portable").parent, folder)
    path = folder / "export.json"
    raw = json.loads(path.read_text())
    raw["outputs"][0]["type"] = "fp16"  # logits
    path.write_text(json.dumps(raw))
    with pytest.raises(EngineError, match=r"differ from export.json's .*: first differences \(export.json -> "
                                          r"network\) logits HALF -> logits FLOAT"):
        builder.build_engine(folder / "model.onnx", tmp_path / "model.engine", backend="tensorrt-rtx")
    assert not (tmp_path / "model.engine").exists()


def test_profiles_held_otherwise_are_refused():
    class Profile:
        def get_shape(self, name):
            return [(1, 1), (2, 8), (2, 9)]  # TensorRT holding another max than asked

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return type("T", (), {"name": "input_ids"})

    from engines.profiles import Profile as Wanted

    wanted = [Wanted("prefill", {"input_ids": ((1, 1), (2, 8), (2, 16))})]
    with pytest.raises(EngineError, match=r"other shapes for the prefill profile.*input_ids"):
        builder.check_profiles(Network(), type("C", (), {"num_optimization_profiles": 1}), [Profile()], wanted)
    with pytest.raises(EngineError, match="holds 0 optimization profiles, expected 1"):
        builder.check_profiles(Network(), type("C", (), {"num_optimization_profiles": 0}), [Profile()], wanted)
