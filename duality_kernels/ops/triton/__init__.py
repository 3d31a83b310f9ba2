"""Triton kernels, one loss family per file (docs/design.md convention 1), imported lazily by functional.py.

- ``lse``: the log-sum-exp family (NT-Xent, DCL, InfoNCE, VICReg-exp, VICReg-ctr), flash-style.
- ``_common``: availability, device rule (CUDA, or CPU under TRITON_INTERPRET=1), precision, blocks.
"""
