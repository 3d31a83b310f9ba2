"""Triton kernels (one loss family per file); none in this version: backend="triton" raises BackendUnavailableError."""
