"""torch -> ONNX: the expert dispatch as custom `jetmoe` nodes with local-function bodies (docs/ops.md),
the TensorRT-compatibility lint, and the ONNX Runtime runner."""
