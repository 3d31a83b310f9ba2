"""Small calls of every compiled kernel, for benchmarks/gpu_check.sh to run under compute-sanitizer.

    python benchmarks/sanitize_calls.py --backend cuda      # the CUDA backend (duality_kernels._C)
    python benchmarks/sanitize_calls.py --backend triton    # one call per public Triton function
    python benchmarks/sanitize_calls.py --backend cuda --dry-run    # here, without a GPU

A script, not a test: under the sanitizer every launch is instrumented, and pytest's collection
and fixtures would multiply what it has to instrument. Each call is a forward and a backward.

- cuda: every op of ops/cuda.py (VICReg, Barlow Twins, spectral and duality_terms on both sides,
  covariance, cross_correlation, normalized_gram with one and two views) in fp32,
  bf16 and fp16, at a shape whose column reductions take several row chunks and whose Gram spans
  several sum blocks (130x70), and one with N < D and rows longer than a 256-thread block (9x300).
- triton: one small fp32 call of each public function with backend="triton" (the Gram family of
  ops/triton/gram.py and the log-sum-exp family of ops/triton/lse.py), every launched kernel.

``--dry-run`` runs the same calls on CPU tensors: the CUDA backend through its simulator
(duality_kernels/testing/csim.py), Triton under its interpreter (float32 only), so that the script is checked
without a GPU (tests/test_gpu_check_script.py). Prints one line per call group, then "calls done".
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _views(n, d, dtype, device, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(0.4, 1.6, d, dtype=torch.float64)
    z2 = 0.6 * z1 + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return (z1 + 0.3).to(device, dtype).requires_grad_(), (z2 - 0.1).to(device, dtype).requires_grad_()


def _flat(out):
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def _fwd_bwd(fn, z1, z2):
    """fn's outputs, then the gradients of a weighted sum of all of them."""
    import torch

    parts = _flat(fn(z1, z2))
    total = sum((p.float() * (i + 1)).sum() for i, p in enumerate(parts))
    torch.autograd.grad(total, (z1, z2), allow_unused=True)


def cuda_calls(device, dtypes, shapes):
    """Every CUDA-backend op, forward and backward."""
    from duality_kernels.ops import cuda as C

    v = (25.0, 25.0, 1.0, 1.0, 1e-4)
    for dtype in dtypes:
        for n, d in shapes:
            z1, z2 = _views(n, d, dtype, device)
            for side in ("sample", "dimension"):
                _fwd_bwd(lambda a, b: C.vicreg(a, b, *v, side), z1, z2)
                _fwd_bwd(lambda a, b: C.barlow_twins(a, b, 0.0051, 1e-5, side), z1, z2)
                _fwd_bwd(lambda a, b: C.spectral(a, b, 0.5 * d, side), z1, z2)
                _fwd_bwd(lambda a, b: C.duality_terms(a, side), z1, z2)
            _fwd_bwd(lambda a, b: C.covariance(a, 1), z1, z2)
            _fwd_bwd(lambda a, b: C.cross_correlation(a, b, 1e-5), z1, z2)
            _fwd_bwd(lambda a, b: C.normalized_gram(a, b), z1, z2)
            _fwd_bwd(lambda a, b: C.normalized_gram(a), z1, z2)
            print(f"cuda {str(dtype).split('.')[-1]} {n}x{d}: ok", flush=True)


def triton_calls(device, shape):
    """One call of each public function on the Triton backend, forward and backward."""
    import torch

    import duality_kernels as dk

    z1, z2 = _views(*shape, torch.float32, device)
    calls = {
        "normalized_gram": lambda a, b: dk.normalized_gram(a, b, backend="triton"),
        "covariance": lambda a, b: dk.covariance(a, backend="triton"),
        "cross_correlation": lambda a, b: dk.cross_correlation(a, b, backend="triton"),
        "sample_contrastive_criterion": lambda a, b: dk.sample_contrastive_criterion(a, side="sample",
                                                                                     backend="triton"),
        "dimension_contrastive_criterion": lambda a, b: dk.dimension_contrastive_criterion(a, side="dimension",
                                                                                           backend="triton"),
        "duality_terms": lambda a, b: dk.duality_terms(a, backend="triton"),
        "vicreg_loss": lambda a, b: dk.vicreg_loss(a, b, backend="triton"),
        "barlow_twins_loss": lambda a, b: dk.barlow_twins_loss(a, b, backend="triton"),
        "spectral_contrastive_loss": lambda a, b: dk.spectral_contrastive_loss(a, b, mu=8.0, backend="triton"),
        "ntxent_loss": lambda a, b: dk.ntxent_loss(a, b, backend="triton"),
        "dcl_loss": lambda a, b: dk.dcl_loss(a, b, backend="triton"),
        "infonce_loss": lambda a, b: dk.infonce_loss(a, b, backend="triton"),
        "vicreg_exp_loss": lambda a, b: dk.vicreg_exp_loss(a, b, backend="triton"),
        "vicreg_ctr_loss": lambda a, b: dk.vicreg_ctr_loss(a, b, backend="triton"),
    }
    for name, fn in calls.items():
        _fwd_bwd(fn, z1, z2)
        print(f"triton {name} {shape[0]}x{shape[1]}: ok", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("cuda", "triton"), required=True)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU tensors: the CUDA backend's simulator, Triton's interpreter")
    args = parser.parse_args(argv)
    if args.dry_run and args.backend == "triton":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch

    if args.dry_run:
        device = "cpu"
        if args.backend == "cuda":
            from duality_kernels.testing import csim

            csim.enable()
    else:
        if not torch.cuda.is_available():
            print("sanitize_calls: no CUDA device (use --dry-run without a GPU)", file=sys.stderr)
            return 2
        device = "cuda"
    if args.backend == "cuda":
        # the simulator runs a 130x70 case in seconds; bf16/fp16 through it as well
        dtypes = (torch.float32, torch.bfloat16, torch.float16)
        shapes = ((130, 70), (9, 300)) if not args.dry_run else ((130, 70),)
        cuda_calls(device, dtypes, shapes)
    else:
        triton_calls(device, (33, 48) if not args.dry_run else (17, 33))
    if device == "cuda":
        torch.cuda.synchronize()
    print("calls done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
