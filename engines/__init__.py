"""TensorRT engines: plugins for the `jetmoe` ops (Triton kernels), engine build, runtime. Not built yet."""
