"""User-facing failures of the engine stage (build, load, run). All are `JetMoeError`s: the CLI prints one line."""

from __future__ import annotations

from jetmoe.errors import JetMoeError


class EngineError(JetMoeError):
    """An engine cannot be built or run as asked (bad ONNX for the request, missing or mismatched manifest)."""


class EngineMismatch(EngineError):
    """An engine was built for another TensorRT version, GPU, ONNX or plugin version than the one at hand."""


class TensorRTUnavailable(EngineError):
    """TensorRT (or a CUDA GPU, which it needs) is missing on this machine."""


TENSORRT_HINT = ("its builder libraries come from NVIDIA's package index, not PyPI: pip install 'jetmoe-trt[trt]' "
                 "on a machine that reaches it")


def import_tensorrt():
    """`import tensorrt`, or TensorRTUnavailable with a one-line reason."""
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed ({e.name or 'tensorrt'}: {TENSORRT_HINT})") from None
    return tensorrt


def require_cuda_gpu() -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of the current CUDA device, or TensorRTUnavailable."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable(f"no CUDA GPU is visible (torch {torch.__version__}, "
                                  f"CUDA build {torch.version.cuda}); TensorRT engines need one")
    index = torch.cuda.current_device()
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))
