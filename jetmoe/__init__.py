"""Reference JetMoe in PyTorch: config, model, expert-dispatch ops, KV cache, checkpoints, generation."""

from jetmoe.cache import KVCache
from jetmoe.config import PRESETS, JetMoeConfig
from jetmoe.errors import CheckpointError, ConfigError, ExportError, InputError, JetMoeError
from jetmoe.generate import generate
from jetmoe.model import JetMoeForCausalLM, JetMoeForSequenceClassification, JetMoeModel

__all__ = [
    "PRESETS", "CheckpointError", "ConfigError", "ExportError", "InputError", "JetMoeConfig", "JetMoeError",
    "JetMoeForCausalLM", "JetMoeForSequenceClassification", "JetMoeModel", "KVCache", "generate",
]
