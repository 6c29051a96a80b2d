"""fastseq: fused sequence-model kernels and models for PyTorch."""
from . import backends, ops

__version__ = "0.1.0"
