"""Reference JetMoe in PyTorch: config, model, expert-dispatch ops, KV cache, checkpoints, generation."""

from jetmoe.cache import KVCache
from jetmoe.config import PRESETS, JetMoeConfig
from jetmoe.errors import CheckpointError, ConfigError, InputError, JetMoeError
from jetmoe.generate import generate
from jetmoe.model import JetMoeForCausalLM, JetMoeForSequenceClassification, JetMoeModel

__all__ = [
    "PRESETS", "CheckpointError", "ConfigError", "InputError", "JetMoeConfig", "JetMoeError",
    "JetMoeForCausalLM", "JetMoeForSequenceClassification", "JetMoeModel", "KVCache", "generate",
]
