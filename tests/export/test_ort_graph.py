"""model.ort.onnx: the ONNX Runtime graph beside the TensorRT graph, on the same weights file, with nothing to fold;
written by every plugin-dispatch export, recorded in export.json, and what `OnnxrtRunner` runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.exporter import DATA_NAME, MANIFEST_NAME, MODEL_NAME, export_checkpoint
from export.onnx_runtime import OnnxrtRunner
from export.ort_graph import ORT_MODEL_NAME
from jetmoe import ExportError, KVCache
from tests.conftest import CONFIGS, make_model
from tests.export.test_exporter import FP32_TOL, OnnxModel, empty_past, feeds_for


def _session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the expert views are graph inputs on purpose (one warning each)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, feeds):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _padded_prefill_and_decode(onnx_model: OnnxModel, session, eager, steps: int = 3):
    """max |logit diff| against eager over a left-padded prefill and `steps` decode steps; max |logit|."""
    config = onnx_model.config
    gen = torch.Generator().manual_seed(11)
    ids = torch.randint(3, config.vocab_size, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = _run(session, feeds_for(onnx_model, ids, mask, pos, empty_past(config, 3, onnx_model.dtype.torch)))
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask, position_ids=pos, past_key_values=KVCache(), use_cache=True)
    diffs = [np.abs(out["logits"].astype(np.float32) - ref.logits.numpy())[mask.bool().numpy()].max()]
    cache = ref.past_key_values
    for _ in range(steps):
        past = [(torch.from_numpy(out[k]), torch.from_numpy(out[v])) for k, v in onnx_model.names.present]
        token = torch.randint(3, config.vocab_size, (3, 1), generator=gen)
        mask = torch.cat((mask, torch.ones(3, 1, dtype=torch.long)), dim=1)
        pos = pos[:, -1:] + 1
        out = _run(session, feeds_for(onnx_model, token, mask, pos, past))
        with torch.no_grad():
            ref = eager(token, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        diffs.append(np.abs(out["logits"].astype(np.float32) - ref.logits.numpy()).max())
    return max(diffs), float(ref.logits.abs().max())


def test_fp32_matches_eager(exported, tiny_checkpoint):
    path = exported().with_name(ORT_MODEL_NAME)
    diff, _ = _padded_prefill_and_decode(OnnxModel(exported()), _session(path), tiny_checkpoint[1])
    print("ORT graph fp32 max |diff| vs eager", diff)
    assert diff < FP32_TOL


def test_fp16_matches_the_tensorrt_graph_in_onnx_runtime(exported, tiny_checkpoint):
    """Same ops, same fp16 roundings: the two graphs agree to an fp16 ulp or two of the logits."""
    onnx_model = OnnxModel(exported("fp16"))
    config = onnx_model.config
    ids = torch.randint(3, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    mask, pos = torch.ones_like(ids), torch.arange(9).expand(2, 9)
    feeds = feeds_for(onnx_model, ids, mask, pos, empty_past(config, 2, torch.float16))
    ours = _run(_session(exported("fp16").with_name(ORT_MODEL_NAME)), feeds)["logits"].astype(np.float32)
    theirs = _run(_session(exported("fp16")), feeds)["logits"].astype(np.float32)  # the TensorRT graph
    scale = float(np.abs(theirs).max())
    print("fp16 ORT graph vs TensorRT graph", float(np.abs(ours - theirs).max()), "scale", scale)
    assert np.abs(ours - theirs).max() <= 2 * 2.0**-10 * scale
    diff, scale = _padded_prefill_and_decode(onnx_model, _session(exported("fp16").with_name(ORT_MODEL_NAME)),
                                             tiny_checkpoint[1])
    assert diff < 0.02 * scale


def test_every_expert_is_a_view_into_the_same_weights_file(exported):
    folder = exported().parent
    proto = onnx.load(folder / ORT_MODEL_NAME, load_external_data=False)
    trt = onnx.load(folder / MODEL_NAME, load_external_data=False)
    assert not proto.functions and all(n.domain in ("", "com.microsoft") for n in proto.graph.node)
    assert sorted(p.name for p in folder.iterdir() if "data" in p.name) == [DATA_NAME]  # no second weights file
    stacked = {t.name: t for t in trt.graph.initializer if len(t.dims) == 3}
    ext = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer
           if t.data_location == onnx.TensorProto.EXTERNAL}
    assert all(info["location"] == DATA_NAME for info in ext.values())
    data = (folder / DATA_NAME).read_bytes()
    for name, tensor in stacked.items():
        assert name not in ext  # the stacked tensor itself is not loaded ...
        whole = {e.key: e.value for e in tensor.external_data}
        begin, length = int(whole["offset"]), int(whole["length"])
        views = [ext[f"{name}[{e}]"] for e in range(tensor.dims[0])]
        starts = [int(v["offset"]) for v in views]
        assert starts == [begin + e * length // tensor.dims[0] for e in range(tensor.dims[0])]  # ... its slices are
        assert b"".join(data[int(v["offset"]):int(v["offset"]) + int(v["length"])] for v in views) == \
            data[begin:begin + length]
    # ONNX Runtime neither folds nor prepacks an initializer that is also a graph input: every expert view is one
    inputs = {i.name for i in proto.graph.input}
    views = {name for name in ext if name.endswith("]")}
    assert views and views <= inputs and not (set(ext) - views) & inputs
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("If") == 4 * CONFIGS["tiny"].num_hidden_layers * CONFIGS["tiny"].num_local_experts
    assert "Transpose" not in [n.op_type for n in proto.graph.node if n.input and n.input[0] in ext]


def test_the_runner_runs_it_and_export_json_records_it(exported, tmp_path):
    folder = exported().parent
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert {MODEL_NAME, ORT_MODEL_NAME, DATA_NAME} <= set(manifest["files"])
    with OnnxrtRunner(folder) as runner:  # the ORT graph: its expert views are overridable initializers
        assert len(runner.session.get_overridable_initializers()) == 4 * 2 * 8
        assert [i.name for i in runner.session.get_inputs()] == runner.io_names.inputs
    portable = exported(dispatch="portable").parent
    assert ORT_MODEL_NAME not in json.loads((portable / MANIFEST_NAME).read_text())["files"]
    assert not (portable / ORT_MODEL_NAME).exists()  # a portable model.onnx runs as is
    with OnnxrtRunner(portable) as runner:
        assert not runner.session.get_overridable_initializers()
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / ORT_MODEL_NAME).unlink()
    with pytest.raises(ExportError, match="model.ort.onnx is missing"):
        OnnxrtRunner(copy).activate()


def test_validation_outputs_and_sequence_classification(exported, classification_export):
    path = exported(validation_outputs=True).with_name(ORT_MODEL_NAME)
    assert len(_session(path).get_outputs()) == len(OnnxModel(exported(validation_outputs=True)).names.outputs)
    cls_path, eager = classification_export
    session = _session(cls_path.with_name(ORT_MODEL_NAME))
    ids = torch.randint(1, eager.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(8))
    ids[0, 3:] = 0
    out = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": (ids != 0).long().numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - eager(ids, attention_mask=(ids != 0).long()).logits.numpy()).max() < FP32_TOL


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_other_top_k(tmp_path, name):
    model = make_model(CONFIGS[name], seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    onnx_path = export_checkpoint(tmp_path / "ckpt", tmp_path / "onnx")
    onnx_model = OnnxModel(onnx_path)
    diff, _ = _padded_prefill_and_decode(onnx_model, _session(onnx_path.with_name(ORT_MODEL_NAME)), model, steps=2)
    print(name, "max |diff|", diff)
    assert diff < FP32_TOL
    assert onnx_path.with_name(ORT_MODEL_NAME).stat().st_size < 1 << 20
