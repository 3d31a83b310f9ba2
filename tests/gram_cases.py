"""The covariance family's cases shared by the compiled-backend suites (tests/test_gram_backends.py,
tests/test_triton_gram.py, tests/test_cuda_gram.py): the functions with their references, every
custom op with real arguments, and the torch.compile check."""

import torch

from duality_kernels import reference as ref

from .accuracy import _check, _check_compiled, views

SIDES = ["sample", "dimension"]
V = (25.0, 25.0, 1.0, 1.0, 1e-4)  # VICReg's default weights, gamma, eps
BT = (0.0051, 1e-5)                # Barlow Twins' lambda and eps
PREFIX = {"triton": "", "cuda": "cuda_"}


def loss_cases(ops, side, mu):
    """(name, our function, reference) of every two-view function with a side argument."""
    return [
        ("vicreg", lambda a, b: ops.vicreg(a, b, *V, side), lambda a, b: ref.vicreg(a, b, *V, side)),
        ("barlow", lambda a, b: ops.barlow_twins(a, b, *BT, side), lambda a, b: ref.barlow_twins(a, b, *BT, side)),
        ("spectral", lambda a, b: ops.spectral(a, b, mu, side), lambda a, b: ref.spectral(a, b, mu, side)),
        ("duality", lambda a, b: ops.duality_terms(a, side), lambda a, b: ref.duality_terms(a, side)),
    ]


def matrix_cases(ops):
    return [
        ("covariance1", lambda a, b: ops.covariance(a, 1), lambda a, b: ref.covariance(a, 1)),
        ("covariance0", lambda a, b: ops.covariance(a, 0), lambda a, b: ref.covariance(a, 0)),
        ("cross_correlation", lambda a, b: ops.cross_correlation(a, b, 1e-5),
         lambda a, b: ref.cross_correlation(a, b, 1e-5)),
        ("normalized_gram_pair", ops.normalized_gram, ref.normalized_gram),
        ("normalized_gram", lambda a, b: ops.normalized_gram(a), lambda a, b: ref.normalized_gram(a)),
    ]


def check_named(backend, name, kernel_fn, ref_fn, inputs):
    try:
        _check(kernel_fn, ref_fn, inputs)
    except AssertionError as exc:
        raise AssertionError(f"{backend} {name}: {exc}") from exc


def _triton_bwd_args(name, z1, z2, out, grads):
    """The Triton backward ops take the inputs, the forward's saved outputs and the gradients."""
    saved = {"vicreg": 4, "barlow_twins": 3, "spectral": 3, "duality_terms": 4}[name]
    return (z1, *([] if name == "duality_terms" else [z2]), *out[saved:], *grads)


def _cuda_bwd_args(name, z1, z2, out, grads):
    """The CUDA backward ops take what the extension's forward saved (its leading inputs for some)."""
    if name == "vicreg":
        return (z1, z2, *out[4:7], *grads)
    if name == "barlow_twins":
        return (*out[3:7], *grads)
    if name == "spectral":
        return (z1, z2, *out[3:6], *grads)
    return (z1, *out[4:7], *grads)


def op_cases(backend, n, d, dtype, device):
    """(op name, args) for every custom op of ``backend``, the backward ops fed from a real forward."""
    ops, p = torch.ops.duality_kernels, PREFIX[backend]
    bwd_args = _cuda_bwd_args if backend == "cuda" else _triton_bwd_args
    z1, z2 = views(n, d, dtype, 11, device)
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g0 = [torch.tensor(v, dtype=acc, device=device) for v in (1.0, 0.5, -0.25, 2.0)]
    gen = torch.Generator(device=device).manual_seed(6517)
    gm = torch.randn(n, n, dtype=acc, device=device, generator=gen)
    gen = torch.Generator(device=device).manual_seed(755)
    gd = torch.randn(d, d, dtype=acc, device=device, generator=gen)
    cases = []
    for side in SIDES:
        for name, params, k in (("vicreg", V, 4), ("barlow_twins", BT, 3), ("spectral", (2.0,), 3)):
            cases.append((f"{p}{name}_fwd", (r1, r2, *params, side)))
            out = getattr(ops, f"{p}{name}_fwd")(z1, z2, *params, side)
            cases.append((f"{p}{name}_bwd", (*bwd_args(name, z1, z2, out, g0[:k]), *params, side)))
        cases.append((f"{p}duality_terms_fwd", (r1, side)))
        out = getattr(ops, f"{p}duality_terms_fwd")(z1, side)
        cases.append((f"{p}duality_terms_bwd", (*bwd_args("duality_terms", z1, z2, out, g0), side)))
    cov = getattr(ops, f"{p}covariance_fwd")(z1, 1)
    xc = getattr(ops, f"{p}cross_correlation_fwd")(z1, z2, 1e-5)
    cases += [(f"{p}covariance_fwd", (r1, 1)), (f"{p}cross_correlation_fwd", (r1, r2, 1e-5))]
    if backend == "cuda":
        cases += [(f"{p}covariance_bwd", (cov[1], gd, 1)), (f"{p}cross_correlation_bwd", (*xc[1:], gd, 1e-5))]
    else:
        cases += [(f"{p}covariance_bwd", (z1, *cov[1:], gd, 1)),
                  (f"{p}cross_correlation_bwd", (z1, z2, *xc[1:], gd, 1e-5))]
    for other in (None, r2):
        o2 = None if other is None else z2
        cases.append((f"{p}normalized_gram_fwd", (r1, other)))
        cases.append((f"{p}normalized_gram_bwd", (z1, o2, *getattr(ops, f"{p}normalized_gram_fwd")(z1, o2)[1:], gm)))
    return cases


def compile_check(ops, compiler, device, dtype=torch.float32):
    z1, z2 = views(21, 35, dtype, 12, device)

    def loss_fn(a, b):
        loss, terms = ops.vicreg(a, b, *V, "sample")
        return loss + 0.5 * terms["covariance"] + ops.barlow_twins(a, b, *BT, "dimension")[0]

    _check_compiled(loss_fn, z1, z2, compiler)
