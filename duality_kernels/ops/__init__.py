"""Compiled backends: ops/cuda.py (duality_kernels._C) and ops/triton/."""
