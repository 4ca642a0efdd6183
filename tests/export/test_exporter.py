"""`jetmoe export`: ONNX Runtime against eager on the same checkpoint, the file's contents, and bad input."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from export.exporter import DATA_NAME, MANIFEST_NAME, MODEL_NAME, export_checkpoint
from export.onnx_runtime import OnnxrtRunner
from export.ort_graph import ORT_MODEL_NAME
from export.sidecars import GENAI_CONFIG_NAME, GENERATION_CONFIG_NAME
from export.weights_check import weights_report
from jetmoe import CheckpointError, ExportError, InputError, JetMoeForCausalLM, KVCache, OutputError
from jetmoe.config import CONFIG_NAME
from jetmoe.generate import generate
from tests.conftest import CONFIGS, make_model

FP32_TOL = 1e-4


class OnnxModel(OnnxrtRunner):
    """An active runner whose `run` gives numpy outputs, for comparing with eager's."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.activate()
        self.names = self.io_names

    def run(self, feeds):
        return {name: t.numpy() for name, t in self.infer(feeds).items()}


def feeds_for(model: OnnxModel, ids, mask, pos, past) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    for (k_name, v_name), (k, v) in zip(model.names.past, past, strict=True):
        feeds[k_name], feeds[v_name] = k.numpy(), v.numpy()
    return feeds


def empty_past(config, batch, dtype=torch.float32):
    shape = (batch, config.num_key_value_heads, 0, config.kv_channels)
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))] * config.num_hidden_layers


def test_prefill_then_decode_matches_eager(exported, tiny_checkpoint):
    """Prefill (P = 0) and several decode steps through ONNX Runtime's own KV cache, a left-padded batch, and
    routing that no export example could have had (the export traced fake tensors)."""
    _, eager = tiny_checkpoint
    onnx_model = OnnxModel(exported())
    config = onnx_model.config
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, config.vocab_size, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :8] = 0  # a one-token prompt
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = onnx_model.run(feeds_for(onnx_model, ids, mask, pos, empty_past(config, 3)))
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask, position_ids=pos, past_key_values=KVCache(), use_cache=True)
    real = mask.bool().numpy()
    print("prefill max |diff|", np.abs(out["logits"] - ref.logits.numpy())[real].max())
    assert np.abs(out["logits"] - ref.logits.numpy())[real].max() < FP32_TOL

    past_ort = [(torch.from_numpy(out[k]), torch.from_numpy(out[v])) for k, v in onnx_model.names.present]
    cache = ref.past_key_values
    for step in range(4):
        token = torch.randint(3, config.vocab_size, (3, 1), generator=gen)
        mask = torch.cat((mask, torch.ones(3, 1, dtype=torch.long)), dim=1)
        pos = pos[:, -1:] + 1
        out = onnx_model.run(feeds_for(onnx_model, token, mask, pos, past_ort))
        with torch.no_grad():
            ref = eager(token, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        diff = np.abs(out["logits"] - ref.logits.numpy()).max()
        print(f"decode step {step} max |diff|", diff)
        assert diff < FP32_TOL
        past_ort = [(torch.from_numpy(out[k]), torch.from_numpy(out[v])) for k, v in onnx_model.names.present]
    assert past_ort[0][0].shape == (3, config.num_key_value_heads, 13, config.kv_channels)


def test_greedy_generation_through_onnx_runtime_equals_eager(exported, tiny_checkpoint):
    _, eager = tiny_checkpoint
    prompts = [[5, 17, 9, 30, 4], [8, 3], [12, 40, 41]]
    ours = generate(OnnxModel(exported()), prompts, max_new_tokens=32, eos_token_id=None)
    assert ours == eager.generate(prompts, max_new_tokens=32, eos_token_id=None)
    assert all(len(tokens) == 32 for tokens in ours)


def test_sequence_classification_matches_eager(classification_export):
    path, eager = classification_export
    onnx_model = OnnxModel(path)
    ids = torch.randint(1, eager.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(4))
    ids[0, 5:] = 0
    mask = (ids != 0).long()
    out = onnx_model.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask).logits
    assert out["logits"].shape == (3, 3)
    assert np.abs(out["logits"] - ref.numpy()).max() < FP32_TOL
    assert [i.name for i in onnx.load(path, load_external_data=False).graph.input] == ["input_ids", "attention_mask"]


def test_graph_carries_jetmoe_nodes_and_their_functions(exported, tiny_checkpoint):
    model = onnx.load(exported(), load_external_data=False)
    config = tiny_checkpoint[1].config
    custom = [n for n in model.graph.node if n.domain == "jetmoe"]
    assert sorted({n.op_type for n in custom}) == ["expert_map", "expert_reduce"]
    assert len(custom) == 4 * config.num_hidden_layers  # map + reduce in each of MoA and MoE
    for node in custom:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"plugin_namespace": b"jetmoe", "plugin_version": b"1"}
    assert {(f.domain, f.name) for f in model.functions} == {("jetmoe", "expert_map"), ("jetmoe", "expert_reduce")}
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 21), ("jetmoe", 1)}
    # routing stays standard: router MatMul -> fp32 -> TopK -> Softmax over the k
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("TopK") == 2 * config.num_hidden_layers and "NonZero" not in ops and "Loop" not in ops
    names = [i.name for i in model.graph.input]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and names[3] == "past_key_values.0.key"
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["attention_mask"] == ["batch", "total_seq"]
    assert dims["past_key_values.1.value"] == ["batch", config.num_key_value_heads, "past_seq", config.kv_channels]
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert outputs["logits"] == ["batch", "seq", config.vocab_size]
    assert outputs["present.0.key"][2] == "past_seq + seq"
    assert not any(o.startswith(("router_logits", "hidden_states")) for o in outputs)  # absent by default
    onnx.checker.check_model(str(exported()), full_check=True)


def test_validation_outputs(exported, tiny_checkpoint):
    _, eager = tiny_checkpoint
    onnx_model = OnnxModel(exported(validation_outputs=True))
    config = onnx_model.config
    ids = torch.randint(0, config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(6))
    mask, pos = torch.ones_like(ids), torch.arange(6).expand(2, 6)
    out = onnx_model.run(feeds_for(onnx_model, ids, mask, pos, empty_past(config, 2)))
    with torch.no_grad():
        ref = eager(ids, output_router_logits=True, output_hidden_states=True, use_cache=False)
    for name, value in zip(onnx_model.names.router_logits, ref.router_logits, strict=True):
        assert out[name].dtype == np.float32 and np.abs(out[name] - value.numpy()).max() < FP32_TOL
    for name, value in zip(onnx_model.names.hidden_states + onnx_model.names.moa_hidden_states,
                           ref.hidden_states + ref.moa_hidden_states, strict=True):
        assert np.abs(out[name] - value.numpy()).max() < FP32_TOL
    assert len(ref.moa_hidden_states) == config.num_hidden_layers


def test_fp16_runs_in_onnx_runtime(exported, tiny_checkpoint):
    """fp16: tolerance 2% of the logit range (weights and activations rounded to fp16 everywhere but the fp32
    islands); greedy tokens mostly agree."""
    _, eager = tiny_checkpoint
    onnx_model = OnnxModel(exported("fp16"))
    config = onnx_model.config
    ids = torch.randint(0, config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(7))
    mask, pos = torch.ones_like(ids), torch.arange(8).expand(2, 8)
    out = onnx_model.run(feeds_for(onnx_model, ids, mask, pos, empty_past(config, 2, torch.float16)))
    with torch.no_grad():
        ref = eager(ids).logits.numpy()
    assert out["logits"].dtype == np.float16
    scale = np.abs(ref).max()
    print("fp16 max |diff| / max |logit|", np.abs(out["logits"].astype(np.float32) - ref).max() / scale)
    assert np.abs(out["logits"].astype(np.float32) - ref).max() < 0.02 * scale


@pytest.mark.parametrize("dtype, onnx_type", [("fp16", onnx.TensorProto.FLOAT16), ("bf16", onnx.TensorProto.BFLOAT16)])
def test_half_exports_keep_fp32_islands(exported, dtype, onnx_type):
    """Norm statistics, router top-k/softmax and attention softmax stay fp32 inside the graph."""
    model = onnx.shape_inference.infer_shapes(onnx.load(exported(dtype), load_external_data=False))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    assert {t.data_type for t in model.graph.initializer if t.dims and len(t.dims) >= 2} == {onnx_type}
    islands = [n for n in model.graph.node if n.op_type in ("Softmax", "TopK", "ReduceMean")]
    assert islands and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in islands)


def test_bf16_export_is_valid_but_onnx_runtime_cpu_cannot_run_it(exported):
    import onnxruntime as ort

    path = exported("bf16")
    onnx.checker.check_model(str(path), full_check=True)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|Could not find an implementation"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest(exported, tiny_checkpoint):
    path = exported()
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text())
    assert manifest["task"] == "causal-lm" and manifest["dtype"] == "fp32" and manifest["opset"] == 21
    assert manifest["config"]["hidden_size"] == tiny_checkpoint[1].config.hidden_size
    written = {MODEL_NAME, ORT_MODEL_NAME, DATA_NAME, CONFIG_NAME, GENERATION_CONFIG_NAME, GENAI_CONFIG_NAME}
    assert set(manifest["files"]) == written  # the tiny checkpoint has no tokenizer files to copy
    assert {p.name for p in path.parent.iterdir()} == written | {MANIFEST_NAME}
    for name in written:
        data = (path.parent / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert [op["name"] for op in manifest["custom_ops"]] == ["expert_map", "expert_reduce"]
    assert manifest["inputs"][0] == {"name": "input_ids", "type": "int64", "shape": ["batch", "seq"]}
    assert {"torch", "onnx", "onnxscript"} <= set(manifest["versions"])


def test_export_is_deterministic(exported, tiny_checkpoint, tmp_path):
    again = export_checkpoint(tiny_checkpoint[0], tmp_path / "again")
    first = exported()
    for name in (MODEL_NAME, ORT_MODEL_NAME, DATA_NAME, CONFIG_NAME, GENERATION_CONFIG_NAME, GENAI_CONFIG_NAME):
        assert (again.parent / name).read_bytes() == (first.parent / name).read_bytes(), name


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(dtype="int8"), InputError, "dtype 'int8' is not one of fp32, fp16, bf16"),
    (dict(task="translation"), InputError, "task 'translation' is not one of"),
    (dict(opset=12), InputError, "opset 12 is not supported"),
])
def test_bad_options(tiny_checkpoint, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_and_outputs(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_checkpoint(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "existing").mkdir()
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "existing")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputError, match="a_file is not a folder"):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "a_file" / "out")
    with pytest.raises(ExportError, match="needs pad_token_id"):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "cls", task="sequence-classification")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "existing"]


def test_crash_mid_export_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed while optimizing")
    monkeypatch.setattr("export.exporter._finish_graph", crash)
    with pytest.raises(RuntimeError, match="killed while optimizing"):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_fp16_export_of_loud_attention_stays_finite(tmp_path):
    """A block whose raw q.k reaches ~1.4e5 (past fp16's range): the fp16 graph scales q first and multiplies
    in fp32, so ONNX Runtime (and a TensorRT fp16 engine, which runs the same graph) stays finite and close."""
    from tests.jetmoe.test_model_parity import loud_attention

    model = loud_attention(CONFIGS["tiny"])
    model.save_pretrained(tmp_path / "ckpt")
    runner = OnnxModel(export_checkpoint(tmp_path / "ckpt", tmp_path / "onnx", dtype="fp16"))
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(2))
    mask, pos = torch.ones_like(ids), torch.arange(12)[None]
    out = runner.run(feeds_for(runner, ids, mask, pos, empty_past(runner.config, 1, torch.float16)))
    with torch.no_grad():
        ref = model(ids).logits.numpy()
    assert np.isfinite(out["logits"]).all()
    assert np.abs(out["logits"].astype(np.float32) - ref).max() < 0.05 * np.abs(ref).max()


def test_export_keeps_an_untied_lm_head_as_loading_does(tmp_path):
    """A stored lm_head.weight that differs from the embeddings under tie_word_embeddings=true is exported
    untied, exactly as from_pretrained loads it: its own initializer, under its checkpoint name."""
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    make_model(CONFIGS["tiny"], seed=6).save_pretrained(ckpt)
    path = ckpt / "model.safetensors"
    state = load_file(path)
    save_file({**state, "lm_head.weight": torch.randn_like(state["model.embed_tokens.weight"])}, path,
              metadata={"format": "pt"})
    eager = JetMoeForCausalLM.from_pretrained(ckpt)
    runner = OnnxModel(export_checkpoint(ckpt, tmp_path / "onnx"))
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    out = runner.run(feeds_for(runner, ids, torch.ones_like(ids), torch.arange(5)[None],
                               empty_past(runner.config, 1)))
    with torch.no_grad():
        assert np.abs(out["logits"] - eager(ids).logits.numpy()).max() < FP32_TOL
    names = {t.name for t in onnx.load(runner.path, load_external_data=False).graph.initializer}
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= names
    report = weights_report(runner.path.parent, ckpt)
    assert report, str(report)
