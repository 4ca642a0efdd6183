"""Parity validation: eager / ONNX Runtime / TensorRT runners, the cases, the metrics and the report."""

from validate.tolerances import DEFAULTS, Tolerances
from validate.validator import ValidationReport, validate_export

__all__ = ["DEFAULTS", "Tolerances", "ValidationReport", "validate_export"]
