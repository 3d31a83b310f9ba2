"""Triton kernels of the log-sum-exp family (docs/spec.md §3 VICReg-exp/-ctr, §4 NT-Xent, DCL,
InfoNCE, §5 their gathered forms), flash-style: memory O(N·D), no N×N matrix.

One problem shape serves every loss: anchors (rows of A) against keys (rows of B), logits
t(A_a·B_b)/τ with the self and positive masks, per anchor a log-sum-exp and a term. Modules, one per
pass, each kernel beside its launcher: ``plan`` (launch tables, dtype helpers), ``tiles`` (shared
jit helpers), ``forward``, ``backward`` (fused, or coefficient stripes + cuBLAS), ``prep`` (column
statistics, operand prologue, backward epilogue), ``vicreg`` and ``contrastive`` (the losses'
implementations), ``ops`` (custom ops, drop-in Functions, the functions functional.py calls).

Untested on GPU: run under the Triton interpreter and compiled for sm_90 ahead of time
(benchmarks/kernel_report.py); design notes and performance estimates in docs/triton_lse.md.
"""

from .ops import (_SPEC_ANCHOR_LSE, _SPEC_DCL, _SPEC_INFONCE, _SPEC_NTXENT, _SPEC_VICREG_CTR, _SPEC_VICREG_EXP,
                  DCLFunction, InfoNCEFunction, NTXentFunction, VICRegCtrFunction, VICRegExpFunction, anchor_lse_bwd,
                  anchor_lse_fwd, dcl, dcl_bwd, dcl_fwd, dcl_terms, infonce, infonce_bwd, infonce_fwd, infonce_terms,
                  ntxent, ntxent_bwd, ntxent_fwd, ntxent_terms, vicreg_ctr, vicreg_ctr_bwd, vicreg_ctr_fwd, vicreg_exp,
                  vicreg_exp_bwd, vicreg_exp_fwd)
from .plan import L2_EPS, TRANSFORMS
from .supervised import HardNegativeNTXentFunction, MoCoFunction, SupConFunction  # noqa: F401 (registers)
from . import two_tower, two_tower_siglip  # noqa: F401,E402 (registers clip and siglip)

__all__ = ["DCLFunction", "InfoNCEFunction", "NTXentFunction", "VICRegCtrFunction", "VICRegExpFunction", "dcl",
           "infonce", "ntxent", "vicreg_ctr", "vicreg_exp"]
