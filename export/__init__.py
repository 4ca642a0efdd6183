"""torch -> ONNX export with the expert dispatch as custom `jetmoe` nodes (see docs/ops.md). Not built yet."""
