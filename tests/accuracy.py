"""Shared helpers of the kernel tests: test inputs and docs/design.md convention 5's accuracy rule.

truth = the reference in float64, eager = the reference in the test dtype;
max|kernel − truth| ≤ 2·max|eager − truth| + 1e-6 for values, 3× for gradients.
"""

import torch


def views(n, d, dtype, seed, device):
    """Two correlated views with per-column scales spread around 1 (so VICReg's hinge is active
    on some columns only) and a nonzero mean (so centering matters)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.4, 1.6, d, dtype=torch.float64)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64) * scale + 0.3
    z2 = 0.6 * z1 + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64) - 0.1
    return z1.to(device=device, dtype=dtype), z2.to(device=device, dtype=dtype)


def _flat(out):
    """loss/terms/matrices of any function here as a flat list of tensors."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    items = []
    for o in out:
        items.extend(_flat(o))
    return items


def _run(fn, inputs, weights):
    """Outputs of fn(*inputs) and the gradients of Σ_o ⟨w_o, o⟩ w.r.t. every input."""
    xs = [x.detach().clone().requires_grad_() for x in inputs]
    outs = _flat(fn(*xs))
    total = sum((o.double() * w.to(o.device)).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(total, xs, allow_unused=True)
    # an input the function does not use gets None (the same for kernel and reference)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]
    return [o.detach() for o in outs], grads


def _err(a, b):
    return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0


F64_RTOL = 1e-12  # float64 kernels against the float64 reference, relative to max|truth|


def _half_ulp(truth, dtype):
    """Half the spacing of ``dtype`` numbers at |truth| (0-dim): the final rounding of a result."""
    t = truth.detach().abs().to(dtype)
    return 0.5 * (torch.nextafter(t, torch.full_like(t, float("inf"))) - t).double().item()


def _assert_rule(name, kernel, eager, truth, factor, rel_slack=0.0):
    """docs/design.md convention 5. The bound also allows the output's own final rounding (half an ulp of
    max|truth| in the output dtype): a kernel whose unrounded result is as accurate as eager's can
    still round to the other neighbour of the truth, and a single number or a tensor of a few
    elements has no statistics to absorb that (e.g. Barlow's off_diagonal, ~70 in fp32: ulp 7.6e-6,
    eager 1.6e-6 from the truth, the kernel 6.0e-6; VICReg's gradient of two 1-column rows, 52.4:
    ulp 3.8e-6, eager 1.2e-6 (0.3 ulp), Triton 5.0e-6 (1.3 ulp), test_properties' long profile).
    Below |truth| = 16 in fp32 the half ulp is under 1e-6, so the rule is what it was there.
    ``rel_slack``: the 1e-6 becomes max(1e-6, rel_slack·max|truth|) (see _check). float64 results
    are held to F64_RTOL relative instead: eager is the truth there, and an absolute 1e-6 let a
    kernel that secretly computes in float32 pass."""
    assert kernel.shape == truth.shape, f"{name}: shape {tuple(kernel.shape)} != {tuple(truth.shape)}"
    ke, ee = _err(kernel, truth), _err(eager, truth)
    scale = truth.detach().abs().max().item() if truth.numel() else 0.0
    top = truth.detach().abs().max() if truth.numel() else truth.new_zeros(())
    if kernel.dtype == torch.float64:
        slack = max(F64_RTOL, rel_slack) * scale + _half_ulp(top, kernel.dtype)
    else:
        slack = max(1e-6, rel_slack * scale) + _half_ulp(top, kernel.dtype)
    assert ke <= factor * ee + slack, (
        f"{name}: max|kernel - truth| = {ke:.3e} > {factor}*max|eager - truth| + {slack:.3e} "
        f"(eager error {ee:.3e})")


def _weights(outs, seed):
    """Upstream gradients for each output, exactly representable in fp32 (so the test dtype's
    rounding of them is not part of the comparison)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).float().double() for o in outs]


def _check(kernel_fn, ref_fn, inputs, seed=0, rel_slack=0.0):
    """docs/design.md convention 5 on every output (2×) and every input gradient (3×).

    ``rel_slack`` > 0 scales the rule's 1e-6 slack with each item's magnitude, for inputs where an
    absolute 1e-6 measures nothing: float64 inputs (eager is the truth then, and the rule is its
    slack alone, below one ulp of values past ~1e10) or an all-zero row under l2n (gradients
    ~1e12, tests/test_properties.py)."""
    truth_inputs = [x.double() for x in inputs]
    truth_outs = _flat(ref_fn(*truth_inputs))
    weights = _weights(truth_outs, seed)
    k_outs, k_grads = _run(kernel_fn, inputs, weights)
    e_outs, e_grads = _run(ref_fn, inputs, weights)
    t_outs, t_grads = _run(ref_fn, truth_inputs, weights)
    acc = torch.float64 if inputs[0].dtype == torch.float64 else torch.float32
    for i, (k, e, t) in enumerate(zip(k_outs, e_outs, t_outs)):
        assert k.dtype == acc, f"output {i}: dtype {k.dtype}, expected {acc}"
        assert k.device == inputs[0].device
        assert not torch.isnan(k).any(), f"output {i} has NaN"
        _assert_rule(f"output {i}", k, e, t, 2, rel_slack)
    for i, (x, k, e, t) in enumerate(zip(inputs, k_grads, e_grads, t_grads)):
        assert k.dtype == x.dtype, f"grad {i}: dtype {k.dtype}, expected {x.dtype}"
        assert not torch.isnan(k).any(), f"grad {i} has NaN"
        _assert_rule(f"grad of input {i}", k, e, t, 3, rel_slack)


def _spectral_mu(z1):
    """About half the rows clamped, half kept (both branches of the norm clamp), with sqrt(mu)
    halfway between two rows' norms, so no row sits on the boundary where rounding decides."""
    sq = z1.double().pow(2).sum(1).sort().values
    k = (sq.numel() - 1) // 2
    return float((sq[k] + sq[k + 1]) / 2)


def _check_low_precision(kernel_fn, ref_fn, inputs, rtol):
    """bf16/fp16: kernel vs the float64 reference on the same (rounded) inputs, each output and
    gradient within rtol·max|truth| (eager bf16 is no oracle: the reference computes in fp32).

    Gradients come back in the input dtype (docs/spec.md), and a true gradient beyond that dtype's finite
    range has no better answer than ±inf (eager autograd gives the same; AMP's GradScaler exists
    to catch it). Seen: duality_terms' gradient of 1000x300 fp16 views reaches 1.7e5 > 65504, the
    largest fp16, in 22489 of its 300000 entries (simulator, 2026-11-30). So both sides are
    compared clamped to the item's finite range: an inf is right exactly where the truth lies
    beyond it (up to rounding at the edge), and wrong anywhere else; a NaN is always wrong."""
    truth_inputs = [x.double() for x in inputs]
    weights = _weights(_flat(ref_fn(*truth_inputs)), 0)
    k_outs, k_grads = _run(kernel_fn, inputs, weights)
    t_outs, t_grads = _run(ref_fn, truth_inputs, weights)
    for i, (k, t) in enumerate(zip(k_outs + k_grads, t_outs + t_grads)):
        assert not torch.isnan(k).any(), f"item {i}: NaN"
        top = torch.finfo(k.dtype).max
        err = _err(k.double().clamp(-top, top), t.clamp(-top, top))
        scale = t.abs().max().item()
        assert err <= rtol * scale + 1e-6, f"item {i}: error {err:.3e}, scale {scale:.3e}"
    for x, g in zip(inputs, k_grads):
        assert g.dtype == x.dtype


def _check_relative(kernel_fn, ref_fn, inputs, rtol):
    """Every output and gradient finite and within rtol·max|truth| of the float64 reference (for
    results whose scale makes the accuracy rule's absolute slack meaningless, e.g. the 1/1e-12
    gradient of l2n at a zero row)."""
    truth_inputs = [x.double() for x in inputs]
    weights = _weights(_flat(ref_fn(*truth_inputs)), 0)
    k_outs, k_grads = _run(kernel_fn, inputs, weights)
    t_outs, t_grads = _run(ref_fn, truth_inputs, weights)
    for k, t in zip(k_outs + k_grads, t_outs + t_grads):
        assert torch.isfinite(k).all()
        assert _err(k, t) <= rtol * t.abs().max().item() + 1e-6


def _check_deterministic(fns, inputs):
    """No atomics: two runs of each function agree bit for bit, outputs and gradients (docs/design.md convention 7)."""
    for fn in fns:
        w = _weights(_flat(fn(*inputs)), 0)
        first, g_first = _run(fn, inputs, w)
        again, g_again = _run(fn, inputs, w)
        assert all(torch.equal(a, b) for a, b in zip(first + g_first, again + g_again))


def _check_fakes_on_meta(cases):
    """Each (op name, args) of torch.ops.duality_kernels: the fake on meta tensors gives the real
    op's output shapes and dtypes."""
    for name, args in cases:
        op = getattr(torch.ops.duality_kernels, name).default
        real = _flat(op(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args]))
        meta = _flat(op(*[a.detach().to("meta") if isinstance(a, torch.Tensor) else a for a in args]))
        assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in meta], name


def _check_compiled(loss_fn, z1, z2, backend):
    """torch.compile(fullgraph=True) of loss_fn: the same value and gradients as eager."""
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    outs = []
    for fn in (loss_fn, compiled):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        value = fn(a, b)
        value.backward()
        outs.append((value.detach(), a.grad, b.grad))
    for eager, comp in zip(*outs):
        torch.testing.assert_close(comp, eager, rtol=1e-6, atol=1e-6)


GRAM_OPS = ("vicreg", "barlow_twins", "spectral", "covariance", "cross_correlation", "normalized_gram",
            "duality_terms")  # the Gram-family ops of both compiled backends


def _check_opcheck(cases, prefix=""):
    """torch.library.opcheck of each (op name, args) of torch.ops.duality_kernels; the cases cover
    exactly the forward and backward ops ``<prefix><op>_fwd/_bwd`` of GRAM_OPS."""
    expected = {f"{prefix}{op}_{kind}" for op in GRAM_OPS for kind in ("fwd", "bwd")}
    names = set()
    for name, args in cases:
        names.add(name)
        torch.library.opcheck(getattr(torch.ops.duality_kernels, name).default, args)
    assert names == expected


def _check_same_bits(cases, z1, z2):
    """Each (f, g) pair of functions of two views gives bit-identical outputs and gradients (of a
    fixed weighting of the output), e.g. the eager path and the custom op of the same op."""
    for i, (f, g) in enumerate(cases):
        results = []
        for fn in (f, g):
            a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
            out = fn(a, b)
            w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
            grads = torch.autograd.grad((out * w).sum(), (a, b), allow_unused=True)
            results.append([out.detach()] + [torch.zeros_like(z1) if d is None else d for d in grads])
        assert all(torch.equal(x, y) for x, y in zip(*results)), f"case {i}"
