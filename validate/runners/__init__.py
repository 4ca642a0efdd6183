"""Backends behind one contract: a dict of named inputs in, a dict of named outputs out (Polygraphy's design)."""

from validate.runners.base import BaseRunner, RunnerUnavailable
from validate.runners.eager import EagerRunner
from validate.runners.onnxrt import OnnxrtRunner
from validate.runners.tensorrt import TrtRunner

__all__ = ["BaseRunner", "EagerRunner", "OnnxrtRunner", "RunnerUnavailable", "TrtRunner"]
