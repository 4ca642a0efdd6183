"""Parity validation: eager / ONNX Runtime / TensorRT runners and the comparator. Not built yet."""
