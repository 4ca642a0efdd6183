"""`JetMoeConfig`: the seed documentation's parameters, their defaults, validation and config.json I/O.

Field names are HF transformers' `JetMoeConfig` names. Loading also understands the original JetMoE keys
(`ffn_hidden_size`, `moe_num_experts`, `moe_top_k`) that real jetmoe-8b config.json files use; HF ignores
them and works only because its defaults happen to coincide.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from jetmoe.errors import ConfigError

CONFIG_NAME = "config.json"
ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "relu")
DTYPES = ("float32", "float16", "bfloat16")
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Original JetMoE key -> HF key. Both may appear in one file; they must then agree.
_ALIASES = {
    "ffn_hidden_size": "intermediate_size",
    "moe_num_experts": "num_local_experts",
    "moe_top_k": "num_experts_per_tok",
    "head_dim": "kv_channels",
    "torch_dtype": "dtype",
}

_POSITIVE_INTS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "kv_channels",
    "intermediate_size", "max_position_embeddings", "num_local_experts", "num_experts_per_tok", "num_labels",
)


@dataclasses.dataclass
class JetMoeConfig:
    vocab_size: int = 32000
    hidden_size: int = 2048
    num_hidden_layers: int = 12
    num_key_value_heads: int = 16
    kv_channels: int = 128
    intermediate_size: int = 5632
    max_position_embeddings: int = 4096
    activation_function: str = "silu"
    num_local_experts: int = 8
    num_experts_per_tok: int = 2
    output_router_logits: bool = False
    aux_loss_coef: float = 0.01
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6  # only the final norm; block norms are hard-coded to 1e-6 (as HF)
    initializer_range: float = 0.01
    attention_dropout: float = 0.0
    num_labels: int = 2  # sequence classification
    problem_type: str | None = None  # sequence classification loss; None: inferred from num_labels/labels
    dtype: str | None = None  # dtype the weights were saved in; informational
    num_attention_heads: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(
                f"num_experts_per_tok={self.num_experts_per_tok} exceeds num_local_experts={self.num_local_experts}"
            )
        if self.kv_channels % 2:
            raise ConfigError(f"kv_channels must be even for rotate-half RoPE, got {self.kv_channels}")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(f"activation_function {self.activation_function!r} is not one of {ACTIVATIONS}")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        if not _is_number(self.aux_loss_coef) or not math.isfinite(self.aux_loss_coef):
            raise ConfigError(f"aux_loss_coef must be a finite number, got {self.aux_loss_coef!r}")
        if not _is_number(self.attention_dropout) or not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError(f"attention_dropout must be in [0, 1), got {self.attention_dropout!r}")
        for name in ("bos_token_id", "pad_token_id"):
            self._check_token_id(name, getattr(self, name))
        for token in self.eos_token_ids:
            self._check_token_id("eos_token_id", token)
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type {self.problem_type!r} is not one of {PROBLEM_TYPES}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        self.num_attention_heads = self.num_key_value_heads * self.num_experts_per_tok

    def _check_token_id(self, name: str, value: Any) -> None:
        if value is not None and (not _is_int(value) or not 0 <= value < self.vocab_size):
            raise ConfigError(f"{name}={value!r} is not a token id in [0, vocab_size={self.vocab_size})")

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    @property
    def head_dim(self) -> int:
        return self.kv_channels

    # ---- presets -------------------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> JetMoeConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ---- config.json ---------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JetMoeConfig:
        model_type = raw.get("model_type", "jetmoe")
        if model_type != "jetmoe":
            raise ConfigError(f"model_type {model_type!r} is not 'jetmoe'")
        if raw.get("glu", True) is not True:
            raise ConfigError(f"glu={raw['glu']!r}: only gated (GLU) experts are JetMoe")
        if raw.get("rotary_percent", 1.0) != 1.0:
            raise ConfigError(f"rotary_percent={raw['rotary_percent']!r}: JetMoe rotates the full head dim (1.0)")
        values = {k: v for k, v in raw.items() if k in _FIELDS}
        for alias, name in _ALIASES.items():
            if alias not in raw:
                continue
            if name in values and values[name] != raw[alias]:
                raise ConfigError(f"config sets {name}={values[name]!r} but {alias}={raw[alias]!r}")
            values[name] = raw[alias]
        rope = raw.get("rope_parameters") or raw.get("rope_scaling")
        if rope:
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            if rope_type != "default":
                raise ConfigError(f"rope_type {rope_type!r} is not supported; JetMoe uses 'default' RoPE")
            if "rope_theta" in rope:
                if "rope_theta" in values and values["rope_theta"] != rope["rope_theta"]:
                    raise ConfigError(
                        f"config sets rope_theta={values['rope_theta']!r} but rope_parameters.rope_theta="
                        f"{rope['rope_theta']!r}"
                    )
                values["rope_theta"] = rope["rope_theta"]
        if "num_labels" not in values and isinstance(raw.get("id2label"), dict):
            values["num_labels"] = len(raw["id2label"])
        if isinstance(values.get("dtype"), str):
            values["dtype"] = values["dtype"].removeprefix("torch.")
        config = cls(**values)
        if "num_attention_heads" in raw and raw["num_attention_heads"] != config.num_attention_heads:
            raise ConfigError(
                f"num_attention_heads={raw['num_attention_heads']!r} contradicts num_key_value_heads * "
                f"num_experts_per_tok = {config.num_key_value_heads} * {config.num_experts_per_tok}"
            )
        return config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> JetMoeConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object, got {type(raw).__name__}")
        try:
            return cls.from_dict(raw)
        except TypeError as e:  # a value of the wrong kind reaching a comparison
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> JetMoeConfig:
        return cls.from_json_file(Path(directory) / CONFIG_NAME)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": "jetmoe"}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "rope_theta":
                out["rope_parameters"] = {"rope_theta": value, "rope_type": "default"}
            elif field.name == "dtype" and value is None:
                continue
            else:
                out[field.name] = value
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_original_dict(self) -> dict[str, Any]:
        """`to_dict()` plus the keys a real jetmoe-8b config.json carries (`ffn_hidden_size`, `moe_num_experts`,
        `moe_top_k`, `torch_dtype`, `rope_theta`, `glu`, `rotary_percent`, `bias`). Both dialects, agreeing:
        `from_dict` checks them against each other, and HF transformers (which ignores the original keys) still
        reads the sizes right at every width, not only at jetmoe-8b's, where its defaults happen to coincide."""
        out = self.to_dict()
        out.update({alias: out[name] for alias, name in _ALIASES.items() if name in out and alias != "head_dim"})
        out.update(rope_theta=self.rope_theta, glu=True, rotary_percent=1.0, bias=True)
        return out

    def replace(self, **changes: Any) -> JetMoeConfig:
        return dataclasses.replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_FIELDS = {f.name for f in dataclasses.fields(JetMoeConfig) if f.init}

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for CPU tests and the demo; odd-free but every feature present (MoA + MoE, tied, k=2 of 8).
    "tiny": dict(
        vocab_size=512, hidden_size=64, num_hidden_layers=2, num_key_value_heads=4, kv_channels=16,
        intermediate_size=96, max_position_embeddings=512,
    ),
    # The seed documentation's defaults (HF `JetMoeConfig()`).
    "default": {},
    # jetmoe/jetmoe-8b: 24 blocks; its config.json sets rms_norm_eps 1e-5, which only the final norm uses.
    "jetmoe-8b": dict(num_hidden_layers=24, rms_norm_eps=1e-5, dtype="bfloat16"),
}
