"""TensorRT deployment: Triton kernels for the `jetmoe` ops (engines/kernels), plugins, engine build, runtime."""
