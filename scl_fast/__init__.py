"""scl_fast: SCL vision-language pre-training built on the fused kernels of ``scl_kernels``."""

__version__ = "0.1.0"
