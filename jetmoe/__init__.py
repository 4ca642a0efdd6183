"""Reference JetMoe in PyTorch: config, model, expert-dispatch ops and their contract, KV cache, checkpoints,
the runner contract every backend implements, and generation written once on top of it."""

from jetmoe.cache import KVCache
from jetmoe.config import PRESETS, JetMoeConfig
from jetmoe.errors import (
    CheckpointError,
    ConfigError,
    EngineError,
    ExportError,
    InputError,
    JetMoeError,
    OutputError,
    Unavailable,
)
from jetmoe.generate import generate
from jetmoe.model import JetMoeForCausalLM, JetMoeForSequenceClassification, JetMoeModel
from jetmoe.runner import EagerRunner, Runner

__all__ = [
    "PRESETS", "CheckpointError", "ConfigError", "EagerRunner", "EngineError", "ExportError", "InputError",
    "JetMoeConfig", "JetMoeError", "JetMoeForCausalLM", "JetMoeForSequenceClassification", "JetMoeModel", "KVCache",
    "OutputError", "Runner", "Unavailable", "generate",
]
