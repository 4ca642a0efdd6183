"""Which TensorRT: full TensorRT (`tensorrt`: H100/H200, Quickly Deployable Plugins) or TensorRT-RTX
(`tensorrt_rtx`: GeForce/RTX PRO cards; builds without a GPU; no Python plugins, so portable-dispatch exports
only). The builder, the engine manifest, the lint and the runtime take the flavour by name; nothing else here.
"""

from __future__ import annotations

import dataclasses

from jetmoe.errors import InputError, Unavailable


@dataclasses.dataclass(frozen=True)
class Flavour:
    name: str  # as on the command line and in manifests
    module: str  # the Python module to import
    install: str  # how to get it, for the error message


TENSORRT = Flavour("tensorrt", "tensorrt", "its builder libraries come from NVIDIA's package index, not PyPI: pip "
                   "install 'jetmoe-trt[trt]' on a machine that reaches it")
TENSORRT_RTX = Flavour("tensorrt-rtx", "tensorrt_rtx", "pip install 'jetmoe-trt[rtx]' (TensorRT-RTX from PyPI)")
FLAVOURS = {f.name: f for f in (TENSORRT, TENSORRT_RTX)}


def flavour(name: str) -> Flavour:
    if name not in FLAVOURS:
        raise InputError(f"backend {name!r} is not one of {sorted(FLAVOURS)}")
    return FLAVOURS[name]


def import_tensorrt(name: str = TENSORRT.name):
    """The TensorRT module of a flavour, or Unavailable with a one-line reason."""
    which = flavour(name)
    try:
        return __import__(which.module)
    except ImportError as e:
        raise Unavailable(f"{which.name} is not installed ({e.name or which.module}: {which.install})") from None
    except OSError as e:  # a bindings wheel without its libraries
        raise Unavailable(f"{which.name} is installed but its libraries do not load ({e}): {which.install}") from None


def require_cuda_gpu() -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of the current CUDA device, or Unavailable."""
    import torch

    if not torch.cuda.is_available():
        raise Unavailable(f"no CUDA GPU is visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                          f"running a TensorRT engine needs one")
    index = torch.cuda.current_device()
    return torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index))
