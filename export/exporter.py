"""Checkpoint folder -> `model.onnx` (+ `model.ort.onnx`) + `model.onnx.data` + `export.json`, all or nothing,
with the files other tools read beside them (export/sidecars.py: config.json, generation_config.json,
genai_config.json, the checkpoint's tokenizer files).

The reference model is traced with torch.export on fake tensors (no weights in memory), with the expert
dispatch lowered to opaque `jetmoe` nodes; the graph is cleaned by onnxscript's optimizer while its weights are
still unset (so no weight can be folded into the graph); the weights are then streamed from the checkpoint, one
tensor at a time in the requested dtype, into the external data file, each once, under its checkpoint name; the
graph is given readable dimension names and the ops' local-function bodies, checked, linted and written, and the
weights are checked to be stored exactly once, all external, under their names (export/weights_check.py).

Two expert dispatches (docs/ops.md): "plugin" keeps the `jetmoe` nodes (TensorRT plugins; ONNX Runtime runs their
local functions); "portable" writes them out in standard ONNX ops (export/portable.py) that TensorRT and
TensorRT-RTX build without a plugin. A plugin-dispatch export also gets `model.ort.onnx`, the graph ONNX Runtime
runs (export/ort_graph.py: the functions expanded, each expert's weights a view into the same model.onnx.data).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch

from export import portable, schema
from export.functions import local_functions
from export.lint import LintReport, lint_model, load_graph
from export.manifest import DATA_NAME, MANIFEST_NAME, MODEL_NAME, ExportManifest, file_records, owned_by
from export.ort_graph import ORT_MODEL_NAME, make_ort_graph
from export.sidecars import write_sidecars
from export.weights_check import ALIGN, check_weights, tensor_bytes
from jetmoe import checkpoint, dtypes
from jetmoe.config import JetMoeConfig
from jetmoe.errors import CheckpointError, ExportError, InputError
from jetmoe.fileio import atomic_directory, check_output
from jetmoe.io_names import IoNames
from jetmoe.log import progress
from jetmoe.model import TASKS, JetMoeForCausalLM, JetMoeForSequenceClassification
from jetmoe.op_contract import EXPERT_MAP, EXPERT_REDUCE, ONNX_OPSET_VERSION, OPS

log = logging.getLogger(__name__)
DEFAULT_OPSET = 21
MIN_OPSET = 18  # ScatterND(reduction="add") in the local functions needs 16; the exporter needs 18
MAX_OPSET = 24  # TensorRT 10.15 parses up to 24
_PREFIX = "m."  # the wrapper's attribute holding the model; stripped to get HF weight names
DISPATCHES = ("plugin", "portable")


def lint_file(model: Path) -> LintReport:
    """The default check of a written model: the transcribed TensorRT operator table (export/lint.py)."""
    return lint_model(load_graph(model))


def export_checkpoint(
    checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "fp32",
    task: str = "causal-lm",
    opset: int = DEFAULT_OPSET,
    validation_outputs: bool = False,
    dispatch: str = "plugin",
    overwrite: bool = False,
    lint: Callable[[Path], LintReport] = lint_file,
) -> Path:
    """Export an HF-format JetMoe checkpoint folder to ONNX in `out_dir` (all or nothing); return model.onnx.

    Writes model.onnx, model.onnx.data (every weight once, under its checkpoint name, page aligned so runtimes can
    map it), export.json, and for other tools config.json, generation_config.json, genai_config.json (causal-lm)
    and the checkpoint's tokenizer files (docs/ecosystem.md), every file recorded in export.json. `dispatch`:
    "plugin" (the `jetmoe` nodes, for TensorRT with our plugins, plus model.ort.onnx for ONNX Runtime) or "portable"
    (standard ONNX ops only, for TensorRT-RTX or TensorRT without plugins; ONNX Runtime runs its model.onnx as is).
    `lint` checks the written model before the folder is published (the CLI passes one that also runs a real
    TensorRT parser).
    Raises ExportError / CheckpointError / OutputError naming the offending value; nothing is left behind.
    """
    float_type = dtypes.float_dtype(dtype)
    if task not in TASKS:
        raise InputError(f"task {task!r} is not one of {sorted(TASKS)}")
    if dispatch not in DISPATCHES:
        raise InputError(f"dispatch {dispatch!r} is not one of {list(DISPATCHES)}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET} (TensorRT 10.15 parses "
                         f"up to {MAX_OPSET})")
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint_dir} does not exist")
    out_dir = check_output(out_dir, kind="dir", overwrite=overwrite, inputs=[checkpoint_dir], marker=MANIFEST_NAME,
                           owned=owned_by("export"))
    config = JetMoeConfig.from_pretrained(checkpoint_dir)
    if task == "sequence-classification" and config.pad_token_id is None:
        raise ExportError("sequence-classification export needs pad_token_id in config.json: each row is pooled "
                          "at its last non-pad token")
    files = checkpoint.verify(checkpoint_dir, TASKS[task], config)
    traced = config.replace(tie_word_embeddings=checkpoint.lm_head_tied(files, config))  # as loading would
    names = IoNames(config.num_hidden_layers, task, validation_outputs)
    say = _Progress()

    with atomic_directory(out_dir) as tmp:
        say(f"tracing {task} ({config.num_hidden_layers} layers, {float_type}, opset {opset}, {dispatch} dispatch)")
        program = _trace(traced, TASKS[task], float_type.torch, names, opset)
        say("optimizing the graph (before the weights are set: nothing can fold them)")
        _optimize(program.model)
        say(f"writing weights from {checkpoint_dir}")
        _stream_weights(program.model, files, traced, float_type.torch, tmp / DATA_NAME)
        proto = _finish_graph(program.model, config, names, opset, dispatch)
        onnx.save_model(proto, tmp / MODEL_NAME)
        say("checking the model (onnx.checker, TensorRT lint)")
        onnx.checker.check_model(str(tmp / MODEL_NAME), full_check=True)
        report = lint(tmp / MODEL_NAME)
        if not report:
            raise ExportError(f"the exported graph fails the TensorRT lint:\n{report}")
        weights = check_weights(tmp, files, traced, task, values=False)  # names and byte ranges: headers only
        if not weights:
            raise ExportError(f"the export does not store each weight once, external, under its checkpoint name:"
                              f"\n{weights}")
        written = [MODEL_NAME, DATA_NAME]
        if dispatch == "plugin":  # a portable model.onnx has no functions for ONNX Runtime to fold: it runs as is
            say(f"writing the ONNX Runtime graph ({ORT_MODEL_NAME}: expert views into the same weights)")
            make_ort_graph(tmp)
            written.append(ORT_MODEL_NAME)
        written += write_sidecars(tmp, config, task=task, dtype=float_type.name, names=names,
                                  checkpoint_dir=checkpoint_dir)
        _manifest(config, float_type.name, task, opset, dispatch, names, tmp, checkpoint_dir, written).write(tmp)
    say(f"wrote {out_dir / MODEL_NAME}")
    return out_dir / MODEL_NAME


class _Progress:
    """Progress lines with the elapsed time and the process's peak RSS (export memory is a documented target)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
        log.info("[export %6.1fs, peak RSS %5.2f GiB] %s", time.perf_counter() - self.start, peak, message)


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
        extra = ((out.router_logits, out.selected_experts, out.hidden_states, out.moa_hidden_states)
                 if self.validation_outputs else ())
        return (out.logits, out.past_key_values.to_tuple(), *extra)


class _SequenceClassification(torch.nn.Module):
    def __init__(self, model: JetMoeForSequenceClassification, validation_outputs: bool) -> None:
        super().__init__()
        self.m = model
        self.validation_outputs = validation_outputs

    def forward(self, input_ids, attention_mask):
        out = self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                     output_router_logits=self.validation_outputs, output_hidden_states=self.validation_outputs)
        extra = ((out.router_logits, out.selected_experts, out.hidden_states, out.moa_hidden_states)
                 if self.validation_outputs else ())
        return (out.logits, *extra)


def _trace(config: JetMoeConfig, cls: type, dtype: torch.dtype, names: IoNames, opset: int):
    """torch.export the model on fake tensors and translate it to ONNX (onnx_ir program, weights unset)."""
    import onnxscript
    from torch._subclasses.fake_tensor import FakeTensorMode

    schema.register_schemas()
    jetmoe_ops = onnxscript.values.Opset(schema.DOMAIN, ONNX_OPSET_VERSION)

    def expert_map(x, expert_idx, weight):
        return jetmoe_ops.expert_map(x, expert_idx, weight, **schema.node_attributes(EXPERT_MAP))

    def expert_reduce(h, expert_idx, gates, weight, bias):
        return jetmoe_ops.expert_reduce(h, expert_idx, gates, weight, bias, **schema.node_attributes(EXPERT_REDUCE))

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


def _stream_weights(model, files: checkpoint.WeightFiles, config: JetMoeConfig, dtype: torch.dtype,
                    data_path: Path) -> None:
    """Write each weight's bytes from the checkpoint into `data_path`, one tensor at a time, once, page aligned,
    and name its initializer after the checkpoint tensor (a tied lm_head is the checkpoint's embed_tokens)."""
    from onnxscript import ir

    by_key = {}
    for value in model.graph.initializers.values():
        if value.name.startswith(_PREFIX):  # the model's parameters (the optimizer's own constants have values)
            key = value.name[len(_PREFIX):]
            if key == checkpoint.TIED_KEY and config.tie_word_embeddings:
                key = "model.embed_tokens.weight"
            assert key not in by_key, f"{key} is two initializers: {by_key[key].name}, {value.name}"
            by_key[key] = value

    offset = 0
    with open(data_path, "wb") as f:
        for key, tensor in progress(checkpoint.iter_tensors(files, set(by_key)), "writing weights",
                                    total=len(by_key), unit="tensor", logger=log):
            value = by_key[key]
            if tuple(tensor.shape) != tuple(value.shape.numpy()):
                raise CheckpointError(f"{key}: checkpoint shape {list(tensor.shape)} does not match the "
                                      f"config's {list(value.shape.numpy())}")
            raw = tensor_bytes(tensor.to(dtype))
            f.write(b"\0" * (-offset % ALIGN))
            offset += -offset % ALIGN
            f.write(raw)
            value.const_value = ir.ExternalTensor(DATA_NAME, offset, raw.nbytes, value.dtype, shape=value.shape,
                                                  name=key, base_dir=data_path.parent)
            offset += raw.nbytes
    missing = [name for name, value in model.graph.initializers.items() if value.const_value is None]
    assert not missing, f"initializers without data: {missing}"
    for key, value in by_key.items():  # the graph's weights carry their checkpoint names
        value.name = key


# ---- graph finishing ----------------------------------------------------------------------------------


def _optimize(model) -> None:
    """onnxscript's optimizer, run while the weights are unset: it folds shape arithmetic and small constants, and
    cannot fold a weight (it folds only nodes whose inputs all have values). With the weights set it would replace
    `Transpose(kv_proj.weight)` by an inline transposed copy (onnxscript folds a Transpose whatever its size when
    its input has no other use), leaving the original bytes dead in model.onnx.data and the weight's name gone."""
    import onnxscript.optimizer

    for value in model.graph.initializers.values():
        value.const_value = None  # the trace's fake tensors: shapes and types stay on the values
    dedup = logging.getLogger("onnx_ir.passes.common.initializer_deduplication")  # "... has no constant value"
    level = dedup.level
    dedup.setLevel(logging.ERROR)
    try:
        onnxscript.optimizer.optimize(model)
    finally:
        dedup.setLevel(level)


def _finish_graph(model, config: JetMoeConfig, names: IoNames, opset: int, dispatch: str) -> onnx.ModelProto:
    from onnxscript import ir

    for node in model.graph:
        node.metadata_props.clear()  # stack traces with local paths: noise, and not reproducible
    proto = ir.serde.serialize_model(model)
    _name_dims(proto, names)
    del proto.opset_import[:]
    proto.opset_import.extend([onnx.helper.make_opsetid("", opset),
                               onnx.helper.make_opsetid(schema.DOMAIN, ONNX_OPSET_VERSION)])
    if dispatch == "portable":  # the jetmoe nodes become their standard-op bodies; no domain, no functions
        portable.inline_portable(proto, config.num_local_experts, config.num_experts_per_tok, opset)
    else:
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


def _manifest(config: JetMoeConfig, dtype: str, task: str, opset: int, dispatch: str, names: IoNames, folder: Path,
              checkpoint_dir: Path, written: list[str]) -> ExportManifest:
    proto = onnx.load(folder / MODEL_NAME, load_external_data=False)

    def io(values):
        return [{"name": v.name, "type": dtypes.dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]

    return ExportManifest(
        task=task, dtype=dtype, opset=opset, dispatch=dispatch, config=config.to_dict(),
        checkpoint=str(checkpoint_dir.resolve()), inputs=io(proto.graph.input), outputs=io(proto.graph.output),
        validation_outputs=names.validation_outputs,
        custom_ops=[{"domain": schema.DOMAIN, "name": op.name, "opset_version": ONNX_OPSET_VERSION,
                     **schema.node_attributes(op), "inputs": list(op.input_names),
                     "outputs": list(op.output_names)} for op in OPS.values() if dispatch == "plugin"],
        files=file_records(folder, written), versions=_versions())


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
