"""Checkpoint folder -> `model.onnx` + `model.onnx.data` + `export.json`, all or nothing.

The reference model is traced with torch.export on fake tensors (no weights in memory), with the expert
dispatch lowered to opaque `jetmoe` nodes; the weights are then streamed from the checkpoint, one tensor at a
time in the requested dtype, into the external data file; the graph is cleaned by onnxscript's optimizer, given
readable dimension names and the ops' local-function bodies, checked, linted and written.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export import schema
from export.functions import local_functions
from export.io_names import IoNames
from export.lint import lint_model
from jetmoe import checkpoint
from jetmoe.config import JetMoeConfig
from jetmoe.errors import CheckpointError, ExportError
from jetmoe.model import JetMoeForCausalLM, JetMoeForSequenceClassification

MODEL_NAME = "model.onnx"
DATA_NAME = "model.onnx.data"
MANIFEST_NAME = "export.json"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TASKS = {"causal-lm": JetMoeForCausalLM, "sequence-classification": JetMoeForSequenceClassification}
DEFAULT_OPSET = 21
MIN_OPSET = 18  # ScatterND(reduction="add") in the local functions needs 16; the exporter needs 18
ALIGN = 4096  # external data offsets, page aligned so runtimes can map them
_PREFIX = "m."  # the wrapper's attribute holding the model; stripped to get HF weight names


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "fp32",
    task: str = "causal-lm",
    opset: int = DEFAULT_OPSET,
    validation_outputs: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export an HF-format JetMoe checkpoint folder to ONNX in `out_dir`; return the model path."""
    if dtype not in DTYPES:
        raise ExportError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if task not in TASKS:
        raise ExportError(f"unsupported task {task!r}; choose one of {sorted(TASKS)}")
    if not MIN_OPSET <= opset <= 24:
        raise ExportError(f"unsupported opset {opset}; choose {MIN_OPSET}..24 (TensorRT 10.15 parses up to 24)")
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"output {out_dir} already exists; pass --overwrite to replace it")
    say = _Progress(progress)

    config = JetMoeConfig.from_pretrained(checkpoint_dir) if checkpoint_dir.is_dir() else None
    if config is None:
        raise CheckpointError(f"checkpoint folder {checkpoint_dir} does not exist")
    if task == "sequence-classification" and config.pad_token_id is None:
        raise ExportError("sequence-classification export needs pad_token_id in config.json: each row is pooled "
                          "at its last non-pad token")
    files = checkpoint.verify(checkpoint_dir, TASKS[task], config)
    names = IoNames(config.num_hidden_layers, task, validation_outputs)

    with checkpoint.atomic_directory(out_dir) as tmp:
        say(f"tracing {task} ({config.num_hidden_layers} layers, {dtype}, opset {opset})")
        program = _trace(config, TASKS[task], DTYPES[dtype], names, opset)
        say(f"writing weights from {checkpoint_dir}")
        _stream_weights(program.model, checkpoint_dir, files, config, DTYPES[dtype], tmp / DATA_NAME, say)
        say("optimizing the graph")
        proto = _finish_graph(program.model, config, names, opset)
        onnx.save_model(proto, tmp / MODEL_NAME)
        say("checking the model (onnx.checker, TensorRT lint)")
        onnx.checker.check_model(str(tmp / MODEL_NAME), full_check=True)
        report = lint_model(onnx.load(tmp / MODEL_NAME, load_external_data=False))
        if not report:
            raise ExportError(f"the exported graph fails the TensorRT lint:\n{report}")
        manifest = _manifest(config, dtype, task, opset, names, tmp, checkpoint_dir)
        checkpoint.atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    say(f"wrote {out_dir / MODEL_NAME}")
    return out_dir / MODEL_NAME


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
            print(f"[export {time.perf_counter() - self.start:6.1f}s, peak RSS {peak:5.2f} GiB] {message}",
                  file=sys.stderr, flush=True)


# ---- tracing ------------------------------------------------------------------------------------------


class _CausalLM(torch.nn.Module):
    """Flat tensors in and out: input_ids, attention_mask, position_ids, past (key, value) per layer."""

    def __init__(self, model: JetMoeForCausalLM, validation_outputs: bool) -> None:
        super().__init__()
        self.m = model
        self.validation_outputs = validation_outputs

    def forward(self, input_ids, attention_mask, position_ids, past):
        out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     past_key_values=past, use_cache=True, output_router_logits=self.validation_outputs,
                     output_hidden_states=self.validation_outputs)
        extra = (out.router_logits, out.hidden_states, out.moa_hidden_states) if self.validation_outputs else ()
        return (out.logits, out.past_key_values.to_tuple(), *extra)


class _SequenceClassification(torch.nn.Module):
    def __init__(self, model: JetMoeForSequenceClassification, validation_outputs: bool) -> None:
        super().__init__()
        self.m = model
        self.validation_outputs = validation_outputs

    def forward(self, input_ids, attention_mask):
        out = self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                     output_router_logits=self.validation_outputs, output_hidden_states=self.validation_outputs)
        extra = (out.router_logits, out.hidden_states, out.moa_hidden_states) if self.validation_outputs else ()
        return (out.logits, *extra)


def _trace(config: JetMoeConfig, cls: type, dtype: torch.dtype, names: IoNames, opset: int):
    """torch.export the model on fake tensors and translate it to ONNX (onnx_ir program, weights unset)."""
    import onnxscript
    from torch._subclasses.fake_tensor import FakeTensorMode

    schema.register_schemas()
    jetmoe_ops = onnxscript.values.Opset(schema.DOMAIN, schema.OPSET_VERSION)

    def expert_map(x, expert_idx, weight):
        return jetmoe_ops.expert_map(x, expert_idx, weight, **schema.EXPERT_MAP.attributes)

    def expert_reduce(h, expert_idx, gates, weight, bias):
        return jetmoe_ops.expert_reduce(h, expert_idx, gates, weight, bias, **schema.EXPERT_REDUCE.attributes)

    Dim = torch.export.Dim
    B, S, P = 2, 3, 4  # distinct example sizes, none 0 or 1 (those would be specialised)
    with FakeTensorMode(allow_non_fake_inputs=True), _default_dtype(dtype):
        model = cls(config).eval()
        ids = torch.zeros(B, S, dtype=torch.long)
        if names.task == "causal-lm":
            wrapper = _CausalLM(model, names.validation_outputs)
            kv_shape = (B, config.num_key_value_heads, P, config.kv_channels)
            past = tuple((torch.zeros(kv_shape), torch.zeros(kv_shape)) for _ in range(config.num_hidden_layers))
            args = (ids, torch.ones(B, P + S, dtype=torch.long), torch.zeros(B, S, dtype=torch.long), past)
            kv_dims = ({0: Dim.AUTO, 2: Dim.AUTO}, {0: Dim.AUTO, 2: Dim.AUTO})
            dynamic = ({0: Dim.AUTO, 1: Dim.AUTO},) * 3 + (tuple(kv_dims for _ in past),)
        else:
            wrapper = _SequenceClassification(model, names.validation_outputs)
            args = (ids, torch.ones(B, S, dtype=torch.long))
            dynamic = ({0: Dim.AUTO, 1: Dim.AUTO},) * 2
    with _quiet():
        program = torch.onnx.export(
            wrapper, args, dynamo=True, dynamic_shapes=dynamic, opset_version=opset, optimize=False,
            input_names=names.inputs, output_names=names.outputs, verbose=False,
            custom_translation_table={torch.ops.jetmoe.expert_map.default: expert_map,
                                      torch.ops.jetmoe.expert_reduce.default: expert_reduce})
    return program


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints its own progress lines and warnings to stdout; keep ours the only ones."""
    import io
    import logging
    import warnings

    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision missing"
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)


# ---- weights ------------------------------------------------------------------------------------------


def _stream_weights(model, checkpoint_dir: Path, files: list[Path], config: JetMoeConfig, dtype: torch.dtype,
                    data_path: Path, say: _Progress) -> None:
    """Write every initializer's bytes from the checkpoint into `data_path`, one tensor at a time."""
    from onnxscript import ir

    wanted = {}
    for value in model.graph.initializers.values():
        assert value.name.startswith(_PREFIX), value.name
        key = value.name[len(_PREFIX):]
        if key == checkpoint.TIED_KEY and config.tie_word_embeddings:
            key = "model.embed_tokens.weight"
        wanted[value.name] = key
    by_key = {}
    for name, key in wanted.items():
        by_key.setdefault(key, []).append(name)

    values = model.graph.initializers
    offset, done = 0, 0
    with open(data_path, "wb") as f:
        for key, tensor in checkpoint.iter_tensors(files, set(by_key)):
            raw = _to_bytes(tensor.to(dtype))
            for name in by_key[key]:
                value = values[name]
                if tuple(tensor.shape) != tuple(value.shape.numpy()):
                    raise CheckpointError(f"{key}: checkpoint shape {list(tensor.shape)} does not match the "
                                          f"config's {list(value.shape.numpy())}")
                f.write(b"\0" * (-offset % ALIGN))
                offset += -offset % ALIGN
                f.write(raw)
                value.const_value = ir.ExternalTensor(DATA_NAME, offset, len(raw), value.dtype,
                                                      shape=value.shape, name=name, base_dir=data_path.parent)
                offset += len(raw)
            done += 1
            if done % 16 == 0 or done == len(by_key):
                say(f"  {done}/{len(by_key)} tensors, {offset / 2**20:.0f} MiB")
    missing = [name for name, value in values.items() if value.const_value is None]
    assert not missing, f"initializers without data: {missing}"
    for value in list(values.values()):  # the graph's weights carry their HF names
        value.name = value.name[len(_PREFIX):]
        value.const_value.name = value.name


def _to_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


# ---- graph finishing ----------------------------------------------------------------------------------


def _finish_graph(model, config: JetMoeConfig, names: IoNames, opset: int) -> onnx.ModelProto:
    import onnxscript.optimizer
    from onnxscript import ir

    onnxscript.optimizer.optimize(model)
    for node in model.graph:
        node.metadata_props.clear()  # stack traces with local paths: noise, and not reproducible
    proto = ir.serde.serialize_model(model)
    _name_dims(proto, names)
    del proto.opset_import[:]
    proto.opset_import.extend([onnx.helper.make_opsetid("", opset),
                               onnx.helper.make_opsetid(schema.DOMAIN, schema.OPSET_VERSION)])
    proto.functions.extend(local_functions(config.num_local_experts, opset))
    proto.producer_name, proto.producer_version = "jetmoe-trt", _version()
    proto.graph.name = f"jetmoe_{names.task.replace('-', '_')}"
    return proto


def _name_dims(proto: onnx.ModelProto, names: IoNames) -> None:
    """Replace the exporter's symbols (s17, s17 + s70, ...) by batch, seq, past_seq, total_seq."""
    inputs = {value.name: value for value in proto.graph.input}
    symbols = {}
    for input_name, axis, label in names.dim_labels():
        dim = inputs[input_name].type.tensor_type.shape.dim[axis]
        if dim.dim_param:
            symbols.setdefault(dim.dim_param, label)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, symbols)) + r")\b") if symbols else None

    def rename(values):
        for value in values:
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param and pattern is not None:
                    dim.dim_param = pattern.sub(lambda m: symbols[m.group(1)], dim.dim_param)

    rename(proto.graph.input)
    rename(proto.graph.output)
    rename(proto.graph.value_info)


# ---- manifest -----------------------------------------------------------------------------------------


def _manifest(config: JetMoeConfig, dtype: str, task: str, opset: int, names: IoNames, folder: Path,
              checkpoint_dir: Path) -> dict[str, Any]:
    proto = onnx.load(folder / MODEL_NAME, load_external_data=False)

    def io(values):
        return [{"name": v.name, "type": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
                 if v.type.tensor_type.elem_type != onnx.TensorProto.BFLOAT16 else "bfloat16",
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return {
        "format": "jetmoe-trt export",
        "format_version": 1,
        "task": task,
        "dtype": dtype,
        "opset": opset,
        "config": config.to_dict(),
        "checkpoint": str(checkpoint_dir.resolve()),
        "inputs": io(proto.graph.input),
        "outputs": io(proto.graph.output),
        "validation_outputs": names.validation_outputs,
        "custom_ops": [{"domain": schema.DOMAIN, "name": op.name, "opset_version": schema.OPSET_VERSION,
                        "plugin_namespace": schema.PLUGIN_NAMESPACE, "plugin_version": schema.PLUGIN_VERSION,
                        "inputs": list(op.inputs), "outputs": list(op.outputs)} for op in schema.OPS.values()],
        "files": {name: checkpoint.file_sha256(folder / name) for name in (MODEL_NAME, DATA_NAME)},
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import onnxscript

    return {"jetmoe-trt": _version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jetmoe-trt")
    except PackageNotFoundError:
        return "unknown"
