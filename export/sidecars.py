"""The files beside model.onnx that other tools look for: HF `config.json` and `generation_config.json`,
onnxruntime-genai's `genai_config.json`, and the checkpoint's tokenizer files (docs/ecosystem.md).

    write_sidecars(folder, config, task="causal-lm", dtype="fp32", names=names, checkpoint_dir=ckpt)  # exporter
    add_sidecars("exp")                        # an export made before them: written and recorded in export.json

- `config.json`: `JetMoeConfig.to_original_dict()` in the export's dtype, plus `architectures`: HF transformers
  5.x (`dtype`, `rope_parameters`) and 4.x (`torch_dtype`, the top-level `rope_theta`, which is all 4.x reads)
  both read it, and so does `JetMoeConfig.from_pretrained`.
- `generation_config.json`: the checkpoint's own when it has one, else bos/eos/pad from the config, greedy.
- `genai_config.json` (causal-lm only): our input/output names, `head_size = kv_channels`, KV heads, context
  length, `past_present_share_buffer: false` (the graph concatenates past and new keys; a shared fixed-size
  buffer does not fit it). Type `decoder`, onnxruntime-genai's generic decoder-only LLM. genai marks as padding
  only the trailing `pad_token_id`s of each row (right padding); with no pad token in the config, the first
  eos token is the pad, as in `jetmoe.generate`.
- Tokenizer files are copied as they are when present. onnxruntime-genai runs from token ids without them;
  its `Tokenizer` needs tokenizer.json and tokenizer_config.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from export.manifest import MODEL_NAME, file_records, read_manifest
from jetmoe import dtypes
from jetmoe.config import CONFIG_NAME, JetMoeConfig
from jetmoe.errors import CheckpointError
from jetmoe.fileio import atomic_file, atomic_write_text
from jetmoe.io_names import IoNames

GENERATION_CONFIG_NAME = "generation_config.json"
GENAI_CONFIG_NAME = "genai_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
ARCHITECTURES = {"causal-lm": "JetMoeForCausalLM", "sequence-classification": "JetMoeForSequenceClassification"}


def write_sidecars(folder: Path, config: JetMoeConfig, *, task: str, dtype: str, names: IoNames,
                   checkpoint_dir: Path) -> list[str]:
    """Write the sidecar files into `folder` (an export being assembled); return the names written."""
    files: dict[str, dict[str, Any]] = {CONFIG_NAME: hf_config(config, task, dtype)}
    if task == "causal-lm":
        generation = generation_config(config, checkpoint_dir)
        files[GENERATION_CONFIG_NAME] = generation
        files[GENAI_CONFIG_NAME] = genai_config(config, names, generation)
    for name, content in files.items():
        atomic_write_text(folder / name, json.dumps(content, indent=2, sort_keys=True) + "\n")
    copied = [name for name in TOKENIZER_FILES if (checkpoint_dir / name).is_file()]
    for name in copied:
        with atomic_file(folder / name) as tmp:
            shutil.copyfile(checkpoint_dir / name, tmp)
    return [*files, *copied]


def hf_config(config: JetMoeConfig, task: str, dtype: str) -> dict[str, Any]:
    hf = config.replace(dtype=dtypes.float_dtype(dtype).hf_name).to_original_dict()
    return {**hf, "architectures": [ARCHITECTURES[task]]}


def generation_config(config: JetMoeConfig, checkpoint_dir: Path) -> dict[str, Any]:
    own = checkpoint_dir / GENERATION_CONFIG_NAME
    if own.is_file():
        try:
            return json.loads(own.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{own} is not valid JSON: {e}") from None
    out: dict[str, Any] = {"_from_model_config": True, "do_sample": False}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, key) is not None:
            out[key] = getattr(config, key)
    return out


def genai_config(config: JetMoeConfig, names: IoNames, generation: dict[str, Any]) -> dict[str, Any]:
    eos = generation.get("eos_token_id", config.eos_token_id)
    eos_ids = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    pad = generation.get("pad_token_id", config.pad_token_id)
    pad = pad if pad is not None else (eos_ids[0] if eos_ids else 0)
    model: dict[str, Any] = {
        "type": "decoder",
        "context_length": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "pad_token_id": pad,
        "decoder": {
            "filename": MODEL_NAME,
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
            "head_size": config.kv_channels,
            "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "num_hidden_layers": config.num_hidden_layers,
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                       "past_key_names": _pattern([k for k, _ in names.past]),
                       "past_value_names": _pattern([v for _, v in names.past])},
            "outputs": {"logits": "logits", "present_key_names": _pattern([k for k, _ in names.present]),
                        "present_value_names": _pattern([v for _, v in names.present])},
        },
    }
    bos = generation.get("bos_token_id", config.bos_token_id)
    if bos is not None:
        model["bos_token_id"] = bos
    if eos_ids:
        model["eos_token_id"] = eos_ids if len(eos_ids) > 1 else eos_ids[0]
    search = {
        "do_sample": bool(generation.get("do_sample", False)),
        "temperature": float(generation.get("temperature", 1.0)),
        "top_k": int(generation.get("top_k") or 50),
        "top_p": float(generation.get("top_p", 1.0)),
        "repetition_penalty": float(generation.get("repetition_penalty", 1.0)),
        "max_length": config.max_position_embeddings,
        "min_length": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "early_stopping": True,
        "length_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "diversity_penalty": 0.0,
        "past_present_share_buffer": False,
    }
    return {"model": model, "search": search}


def _pattern(per_layer: list[str]) -> str:
    """`past_key_values.%d.key` from the per-layer names (genai formats the layer index into it)."""
    pattern = per_layer[0].replace(".0.", ".%d.", 1)
    assert [pattern % i for i in range(len(per_layer))] == per_layer, (pattern, per_layer)
    return pattern


def add_sidecars(export_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None) -> list[str]:
    """Write the sidecars into an existing export folder (one made before the exporter wrote them) from its
    export.json, and record them there; the tokenizer files come from `checkpoint_dir` (default: the checkpoint
    export.json names). Return the names written."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    written = write_sidecars(export_dir, manifest.model_config, task=manifest.task, dtype=manifest.dtype,
                             names=manifest.io_names, checkpoint_dir=Path(checkpoint_dir or manifest.checkpoint))
    files = {**manifest.files, **file_records(export_dir, written)}
    dataclasses.replace(manifest, files=files).write(export_dir)
    return written
