"""GPU-side work that is not inference: NVRTC-compiled kernels (preprocessing, NV12 conversion)."""
