"""One exception family. `JetMoeError` and its subclasses are what a user can cause and fix: the CLI prints
their message as one line and exits 1 (2 for `Unavailable`). Every message names the offending value.

`InternalError` is deliberately NOT a `JetMoeError`: it means a bug in jetmoe-trt itself (a broken invariant,
a definition that contradicts its description), and the CLI lets its traceback through. (Polygraphy keeps
`PolygraphyInternalException` apart from `PolygraphyException` for the same reason.)
"""


class JetMoeError(Exception):
    """Base of every error a user of jetmoe-trt can cause and fix."""


class ConfigError(JetMoeError, ValueError):
    """A JetMoe configuration value is invalid or contradicts another."""


class CheckpointError(JetMoeError):
    """A checkpoint folder is missing, incomplete, corrupt or does not match its config."""


class InputError(JetMoeError, ValueError):
    """A model input (token ids, lengths, masks, generation options) or a command argument is out of range."""


class OutputError(JetMoeError):
    """An output path cannot be written as asked (it exists, it would overwrite an input, it is not writable)."""


class ExportError(JetMoeError):
    """An export cannot be done as asked, or an export folder is missing, modified or inconsistent."""


class EngineError(JetMoeError):
    """A TensorRT engine cannot be built or run as asked (bad ONNX for the request, missing or bad manifest)."""


class EngineMismatch(EngineError):
    """An engine was built for another TensorRT version, GPU, ONNX or plugin version than the one at hand."""


class LintFailed(JetMoeError):
    """An ONNX model uses something TensorRT's parser would refuse."""


class ValidationFailed(JetMoeError):
    """A backend under test does not match the eager reference."""


class Unavailable(JetMoeError):
    """A backend cannot run here: a library (TensorRT, ONNX Runtime, triton) or the hardware (a CUDA GPU) is
    missing. Nothing to retry on this machine; the CLI exits 2."""


class InternalError(Exception):
    """A bug in jetmoe-trt (an invariant broken, a definition contradicting its description). Not a JetMoeError."""
