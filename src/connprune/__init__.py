"""connprune: connectivity-aware pruning for PyTorch."""

__version__ = "0.1.0"
