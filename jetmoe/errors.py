"""User-facing failures. Every message names the offending value; `assert` is for internal invariants only."""


class JetMoeError(Exception):
    """Base of every error a user of jetmoe-trt can cause and fix."""


class ConfigError(JetMoeError, ValueError):
    """A JetMoe configuration value is invalid or contradicts another."""


class CheckpointError(JetMoeError):
    """A checkpoint folder is missing, incomplete, corrupt or does not match its config."""


class InputError(JetMoeError, ValueError):
    """A model input (token ids, lengths, masks, generation options) is out of range."""


class ExportError(JetMoeError):
    """An export cannot be done as asked (unsupported dtype or task, output exists, a failed export step)."""
