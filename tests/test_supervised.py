"""supcon_loss, moco_loss, hard_negative_ntxent_loss and the lightly drop-in helpers against the
float64 transcriptions of the official code (duality_kernels/testing/official_supervised.py): values and gradients,
odd shapes, fp32 and bf16 accuracy (docs/design.md convention 5, tests/accuracy.py), errors,
modules, backends and docs/spec.md §5 with 2 and 3 gloo processes."""

import datetime
import math
import os
import pathlib
import re
import tempfile

import pytest
import torch
import torch.distributed as dist

import duality_kernels as dk
from duality_kernels.reference import supervised as RS
from duality_kernels.testing import official_supervised as O

from .accuracy import _check, _check_low_precision
from .dist_util import assert_matches_global, ddp_results, rank_results, save_rank, spawn

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py

RTOL = 1e-12


def gen(seed):
    return torch.Generator().manual_seed(seed)


def features(b, v, d, seed, dtype=torch.float64):
    """[B, V, D] views of B samples: a shared part plus per-view noise (positives are closer)."""
    g = gen(seed)
    base = torch.randn(b, 1, d, generator=g, dtype=torch.float64)
    out = base + 0.7 * torch.randn(b, v, d, generator=g, dtype=torch.float64)
    return out.to(dtype)


def labels_of(b, classes, seed):
    return torch.randint(0, classes, (b,), generator=gen(seed))


def pair(n, d, seed, dtype=torch.float64):
    g = gen(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = 0.6 * z1 + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype)


def assert_close(actual, expected, what, rtol=RTOL, atol=1e-15):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    err = (actual.detach() - expected.detach()).abs().max().item() if actual.numel() else 0.0
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale + atol, f"{what}: max|ours - official| = {err:.3e}, max|official| = {scale:.3e}"


def compare(ours, official, inputs, what, rtol=RTOL):
    """Value and gradients w.r.t. every input, float64."""
    a = [x.clone().requires_grad_(True) for x in inputs]
    b = [x.clone().requires_grad_(True) for x in inputs]
    out, ref = ours(*a), official(*b)
    assert out.dim() == 0 and out.dtype == torch.float64
    assert_close(out, ref, f"{what} value", rtol)
    for i, (x, y) in enumerate(zip(torch.autograd.grad(out, a), torch.autograd.grad(ref, b))):
        # a gradient that is 0 in exact arithmetic (D = 1: l2n is the sign) is rounding noise of the
        # size of the value over the rows' norms in both codes
        norm = torch.linalg.vector_norm(inputs[i], dim=-1).min().item()
        atol = RTOL * max(1.0, abs(ref.item())) / max(norm, 1e-3)
        assert_close(x, y, f"{what} grad[{i}]", rtol, atol)


# ------------------------------------------------------------------------------------------
# SupCon

SUPCON_SHAPES = [
    # (B, V, D, classes or None)
    (2, 2, 3, None), (2, 1, 4, 2), (5, 2, 7, 3), (8, 3, 5, 2), (6, 1, 4, 6),  # V=1, all singleton classes
    (7, 2, 1, 3), (9, 2, 6, 1), (4, 4, 3, None), (16, 2, 16, 5), (3, 1, 5, None),
]


@pytest.mark.parametrize("shape", SUPCON_SHAPES)
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("temps", [(0.07, 0.07), (0.5, 0.1)])
def test_supcon_matches_supcontrast(shape, mode, temps):
    b, v, d, classes = shape
    f = features(b, v, d, seed=b * 100 + v * 10 + d)
    lab = None if classes is None else labels_of(b, classes, seed=b + d)
    t, bt = temps
    compare(lambda x: dk.supcon_loss(x, lab, t, bt, mode),
            lambda x: O.supcon(x, lab, t, bt, mode), [f], f"supcon{shape},{mode},{temps}")


def test_supcon_anchor_without_positive_counts_and_contributes_zero():
    # V = 1, labels [0, 1, 1, 2]: samples 0 and 3 have no positive (SupContrast issue 141's example)
    f = features(4, 1, 5, seed=3)
    lab = torch.tensor([0, 1, 1, 2])
    loss, terms = dk.supcon_loss(f, lab, return_terms=True)
    assert terms["anchors_without_positive"].item() == 2
    assert terms["anchors_without_positive"].dtype == torch.int64
    assert torch.isfinite(loss)
    assert_close(loss, O.supcon(f, lab), "value")
    per_anchor, none = RS.supcon_terms(f, lab, 0.07, 0.07, "all")
    assert none.item() == 2 and per_anchor[0].item() == 0.0 and per_anchor[3].item() == 0.0
    # the mean counts them: the loss is the sum of the two others over 4
    assert_close(loss, per_anchor[1:3].sum() / 4, "mean over all anchors")
    # and a batch where no anchor has a positive gives exactly 0 with a zero gradient
    x = features(3, 1, 4, seed=4).requires_grad_(True)
    loss, terms = dk.supcon_loss(x, return_terms=True)
    assert loss.item() == 0.0 and terms["anchors_without_positive"].item() == 3
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_supcon_labels_any_integer_dtype_and_values():
    f = features(6, 2, 4, seed=5)
    lab = torch.tensor([7, 100, 7, 3, 100, 3])
    ref = O.supcon(f, lab)
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        assert_close(dk.supcon_loss(f, lab.to(dtype)), ref, f"labels {dtype}")
    # one class only: every other row is a positive
    one = torch.zeros(6, dtype=torch.long)
    assert_close(dk.supcon_loss(f, one), O.supcon(f, one), "one class")


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_supcon_chunked_equals_one_block(chunk):
    f = features(9, 2, 5, seed=6)
    lab = labels_of(9, 3, seed=6)
    for mode in ("all", "one"):
        compare(lambda x: RS.supcon_terms(x, lab, 0.1, 0.07, mode, chunk_rows=chunk)[0].mean(),
                lambda x: O.supcon(x, lab, 0.1, 0.07, mode), [f], f"chunk={chunk},{mode}")


def test_chunked_row_lse_keeps_no_full_logit_matrix_for_backward():
    # 80 anchors × 80 rows: one block saves 80·80 logits for the backward; chunks of 8 anchors save
    # only their inputs (each chunk is recomputed in the backward)
    x = features(40, 2, 3, seed=9).requires_grad_(True)
    lab = labels_of(40, 4, seed=9)

    def largest_saved(chunk):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (sizes.append(t.numel()), t)[1], lambda t: t):
            loss = RS.supcon_terms(x, lab, 0.1, 0.07, "all", chunk_rows=chunk)[0].mean()
        loss.backward()
        return max(sizes)

    assert largest_saved(None) >= 80 * 80
    assert largest_saved(8) <= 8 * 80


def test_supcon_noncontiguous_and_zero_row():
    f = features(5, 3, 8, seed=7)[:, :, ::2]   # non-contiguous [5, 3, 4]
    assert not f.is_contiguous()
    lab = torch.tensor([0, 1, 0, 1, 1])
    compare(lambda x: dk.supcon_loss(x, lab), lambda x: O.supcon(x, lab), [f], "non-contiguous")
    g = features(5, 2, 4, seed=8)
    g[2, 1] = 0.0  # a zero row: l2n gives 0, as F.normalize does
    compare(lambda x: dk.supcon_loss(x, lab), lambda x: O.supcon(x, lab), [g], "zero row")


# ------------------------------------------------------------------------------------------
# MoCo


@pytest.mark.parametrize("shape", [(1, 3, 1), (2, 1, 1), (4, 5, 3), (7, 1, 6), (16, 33, 8), (5, 64, 2)])
@pytest.mark.parametrize("temperature", [0.2, 0.07, 1.0])
def test_moco_matches_solo_learn(shape, temperature):
    n, d, k = shape[0], shape[1], shape[2]
    q, key = pair(n, d, seed=n * 31 + d)
    queue = torch.randn(k, d, generator=gen(k + d), dtype=torch.float64)
    compare(lambda a, b: dk.moco_loss(a, b, queue, temperature),
            lambda a, b: O.moco(a, b, queue, temperature), [q, key], f"moco{shape},t={temperature}")


def test_moco_no_gradient_into_queue_and_chunks():
    q, key = pair(6, 4, seed=9)
    queue = torch.randn(11, 4, generator=gen(9), dtype=torch.float64, requires_grad=True)
    loss = dk.moco_loss(q, key, queue)
    assert loss.grad_fn is None  # nothing here requires grad but the queue, which gets none
    q.requires_grad_(True)
    loss = dk.moco_loss(q, key, queue)
    (gq,) = torch.autograd.grad(loss, [q])
    assert queue.grad is None and gq.abs().sum() > 0
    for chunk in (1, 4):
        compare(lambda a, b: RS.moco(a, b, queue, 0.2, chunk_rows=chunk), lambda a, b: O.moco(a, b, queue, 0.2),
                [q.detach(), key], f"chunk={chunk}")


# ------------------------------------------------------------------------------------------
# hard-negative NT-Xent


@pytest.mark.parametrize("shape", [(2, 1), (2, 5), (5, 3), (13, 8), (32, 16)])
@pytest.mark.parametrize("params", [(0.5, 0.1, 1.0), (0.5, 0.0, 0.0), (0.2, 0.1, 0.0), (1.0, 0.5, 2.0),
                                    (0.3, 0.05, 0.5), (0.5, 0.9, 1.0)])
def test_hard_negative_matches_hcl(shape, params):
    z1, z2 = pair(*shape, seed=shape[0] * 7 + shape[1])
    t, tp, beta = params
    compare(lambda a, b: dk.hard_negative_ntxent_loss(a, b, t, tp, beta),
            lambda a, b: O.hcl(a, b, t, tp, beta), [z1, z2], f"hcl{shape},{params}")


def test_hard_negative_clamp_branch_is_taken():
    # tau_plus near 1 and positives almost equal make (reweight − τ⁺·M·pos) negative for some anchors
    # (the clamp decides them) while others stay above it
    z1, z2 = pair(6, 4, seed=11)
    z2 = torch.cat([z1[:3] + 0.01 * z2[:3], z2[3:]])
    n1, n2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    u = torch.cat([n1, n2])
    s = u @ u.T / 0.5
    keep = ~(torch.eye(12, dtype=torch.bool) | torch.eye(12, dtype=torch.bool).roll(6, dims=1))
    neg = s[keep].view(12, 10)
    pos = torch.cat([(n1 * n2).sum(1), (n1 * n2).sum(1)]) / 0.5
    raw = (-0.9 * 10 * pos.exp() + 10 * (2 * neg).exp().sum(1) / neg.exp().sum(1)) / 0.1
    floor = 10 * math.exp(-2.0)
    assert (raw < floor).any() and (raw > floor).any()
    compare(lambda a, b: dk.hard_negative_ntxent_loss(a, b, 0.5, 0.9, 1.0),
            lambda a, b: O.hcl(a, b, 0.5, 0.9, 1.0), [z1, z2], "clamped")


def test_hard_negative_beta0_is_debiased_and_chunks():
    z1, z2 = pair(7, 5, seed=12)
    # beta = 0, tau_plus = 0, no clamp active: plain DCL-style NT-Xent without the positive in the sum
    # of negatives, i.e. log(1 + Σ_neg e^s / e^pos) = NT-Xent's term
    ours = dk.hard_negative_ntxent_loss(z1, z2, 0.5, 0.0, 0.0)
    assert_close(ours, dk.ntxent_loss(z1, z2, 0.5), "beta=0, tau_plus=0 is NT-Xent", rtol=1e-12)
    for chunk in (1, 5):
        compare(lambda a, b: RS.hard_negative_ntxent(a, b, 0.5, 0.1, 1.0, chunk_rows=chunk),
                lambda a, b: O.hcl(a, b, 0.5, 0.1, 1.0), [z1, z2], f"chunk={chunk}")


# ------------------------------------------------------------------------------------------
# lightly helpers against their transcriptions (float64; tests/test_lightly.py compares with lightly)


@pytest.mark.parametrize("size,n", [((16, 5), 4), ((7, 5), 3), ((3, 5), 8), ((1, 5), 2), ((8, 5), 8)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_memory_bank_ntxent_steps(size, n, dtype):
    # float32 inputs use the float32 bank itself: the bank is enqueued in place after the forward
    # and the backward must still see the rows the forward used
    rtol = RTOL if dtype == torch.float64 else 1e-5
    torch.manual_seed(0)
    ours = dk.NTXentLoss(temperature=0.3, memory_bank_size=size)
    theirs = O.MemoryBankNTXent(ours.memory_bank.bank, temperature=0.3)
    for step in range(5):
        z1, z2 = pair(n, 5, seed=100 + step, dtype=dtype)
        grad = step != 2  # a step without gradient leaves the bank as it is
        compare_fn = lambda a, b: ours(a, b) if grad else ours(a.detach(), b)  # noqa: E731
        a, b = z1.clone().requires_grad_(grad), z2.clone().requires_grad_(True)
        a2, b2 = z1.clone().requires_grad_(grad), z2.clone().requires_grad_(True)
        out, ref = compare_fn(a, b), theirs(a2, b2)
        assert_close(out, ref, f"step {step} value", rtol, 1e-6 if dtype == torch.float32 else 1e-15)
        gs = torch.autograd.grad(out, [a, b] if grad else [b])
        rs = torch.autograd.grad(ref, [a2, b2] if grad else [b2])
        for x, y in zip(gs, rs):
            assert_close(x, y, f"step {step} grad", rtol, 1e-6 if dtype == torch.float32 else 1e-15)
        assert torch.equal(ours.memory_bank.bank, theirs.bank), f"step {step}: bank"
        assert int(ours.memory_bank.bank_ptr) == theirs.ptr


@pytest.mark.parametrize("sigma", [0.5, 1e-7, 1e4])
@pytest.mark.parametrize("n", [2, 5, 16])
def test_dclw_matches_transcription(sigma, n):
    z1, z2 = pair(n, 6, seed=n)
    compare(lambda a, b: dk.DCLWLoss(0.2, sigma)(a, b),
            lambda a, b: O.weighted_dcl(a, b, 0.2, lambda x, y: O.vmf_weights(x, y, sigma)), [z1, z2], "dclw")


def test_dcl_weight_fn_with_gradient_and_reductions():
    z1, z2 = pair(5, 4, seed=13)

    def weight(a, b):  # lightly's docstring example: it carries gradient
        return ((a - b) ** 2).sum(dim=1)

    compare(lambda a, b: dk.DCLLoss(0.3, weight_fn=weight)(a, b), lambda a, b: O.weighted_dcl(a, b, 0.3, weight),
            [z1, z2], "weight_fn with gradient")
    terms = dk.DCLLoss(0.3, weight_fn=weight, reduction="none")(z1, z2)
    assert terms.shape == (10,)
    assert_close(dk.DCLLoss(0.3, weight_fn=weight, reduction="sum")(z1, z2), terms.sum(), "sum")
    assert_close(dk.DCLLoss(0.3, weight_fn=weight)(z1, z2), terms.mean(), "mean")
    # weights of one make it the unweighted DCL
    ones = dk.DCLLoss(0.3, weight_fn=lambda a, b: torch.ones(a.shape[0], dtype=a.dtype))(z1, z2)
    assert_close(ones, dk.dcl_loss(z1, z2, 0.3), "weights 1")
    with pytest.raises(ValueError, match=r"weight_fn must return a tensor of shape \(5,\).*\(5, 5\)"):
        dk.DCLLoss(0.3, weight_fn=lambda a, b: a @ b.T)(z1, z2)


@pytest.mark.parametrize("shape", [(4, 3, 5), (5, 2, 3, 4), (3, 1, 6)])
def test_vicreg_positions_is_mean_over_positions(shape):
    g = gen(sum(shape))
    za = torch.randn(*shape, generator=g, dtype=torch.float64)
    zb = za + 0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)
    b, d = shape[0], shape[-1]

    def expected(x, y):  # lightly's formulas: mse, per-entry variance hinge, per-position covariance
        inv = torch.nn.functional.mse_loss(x, y)
        var = 0.5 * sum(torch.relu(1 - torch.sqrt(t.var(dim=0) + 1e-4)).mean() for t in (x, y))
        cov = 0
        for t in (x, y):
            c = t - t.mean(dim=0)
            m = torch.einsum("b...c,b...e->...ce", c, c) / (b - 1)
            off = ~torch.eye(d, dtype=torch.bool)
            cov = cov + (m[..., off].pow(2).sum(-1) / d).mean()
        return 25 * inv + 25 * var + 1.0 * cov

    compare(lambda x, y: dk.VICRegLoss()(x, y), expected, [za, zb], f"vicreg{shape}")
    loss, terms = dk.VICRegLoss(return_terms=True)(za, zb)
    assert set(terms) == {"invariance", "variance", "covariance"}
    assert_close(terms["invariance"], torch.nn.functional.mse_loss(za, zb), "invariance term")


# ------------------------------------------------------------------------------------------
# fp32: the rule of tests/accuracy.py (docs/design.md convention 5) against the official code's own error.
# bf16: eager bf16 is no oracle (it computes in bf16, ours in float32 on bf16 operands): within
# 2e-2·max|truth| of the float64 official code on the same rounded inputs, as tests/accuracy.py's
# _check_low_precision does for the other losses.


def _accuracy(ours, official, inputs):
    if inputs[0].dtype == torch.bfloat16:
        _check_low_precision(ours, official, inputs, rtol=2e-2)
    else:
        _check(ours, official, inputs)


@pytest.mark.parametrize("shape", [(16, 2, 32, 4), (33, 3, 7, None), (8, 1, 16, 3)])
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_supcon_accuracy(shape, mode, dtype):
    b, v, d, classes = shape
    f = features(b, v, d, seed=21, dtype=dtype)
    lab = None if classes is None else labels_of(b, classes, seed=21)
    _accuracy(lambda x: dk.supcon_loss(x, lab, 0.1, 0.07, mode), lambda x: O.supcon(x, lab, 0.1, 0.07, mode), [f])


@pytest.mark.parametrize("shape", [(32, 16, 100), (7, 5, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moco_accuracy(shape, dtype):
    n, d, k = shape
    q, key = pair(n, d, seed=22, dtype=dtype)
    queue = torch.randn(k, d, generator=gen(22), dtype=torch.float32).to(dtype)
    _accuracy(lambda a, b: dk.moco_loss(a, b, queue, 0.07), lambda a, b: O.moco(a, b, queue.to(a.dtype), 0.07),
              [q, key])


@pytest.mark.parametrize("params", [(0.5, 0.1, 1.0), (0.2, 0.1, 0.0), (0.1, 0.05, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hard_negative_accuracy(params, dtype):
    z1, z2 = pair(24, 16, seed=23, dtype=dtype)
    _accuracy(lambda a, b: dk.hard_negative_ntxent_loss(a, b, *params), lambda a, b: O.hcl(a, b, *params), [z1, z2])


def test_bf16_inputs_compute_in_fp32():
    f = features(8, 2, 16, seed=24, dtype=torch.bfloat16)
    lab = labels_of(8, 3, seed=24)
    x = f.clone().requires_grad_(True)
    loss = dk.supcon_loss(x, lab)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    truth = O.supcon(f.double(), lab)
    assert abs(loss.item() - truth.item()) <= 2e-2 * abs(truth.item())
    z1, z2 = pair(8, 16, seed=24, dtype=torch.bfloat16)
    for fn, ref in ((lambda a, b: dk.hard_negative_ntxent_loss(a, b), O.hcl),
                    (lambda a, b: dk.moco_loss(a, b, z1[:5]), lambda a, b: O.moco(a, b, z1[:5].double()))):
        out = fn(z1, z2)
        assert out.dtype == torch.float32
        truth = ref(z1.double(), z2.double())
        assert abs(out.item() - truth.item()) <= 2e-2 * abs(truth.item())


# ------------------------------------------------------------------------------------------
# errors, modules, backends

F3 = features(4, 2, 3, seed=0, dtype=torch.float32)
Z = torch.randn(4, 3, generator=gen(0))
LAB = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: dk.supcon_loss(Z), ValueError, r"features must be 3-D .*got shape \(4, 3\)"),
    (lambda: dk.supcon_loss(F3[None]), ValueError, r"features must be 3-D"),
    (lambda: dk.supcon_loss(F3.long()), TypeError, r"features must be a floating-point tensor.*int64"),
    (lambda: dk.supcon_loss(F3 > 0), TypeError, r"features must be a floating-point tensor.*bool"),
    (lambda: dk.supcon_loss(F3.numpy()), TypeError, r"features must be a torch.Tensor"),
    (lambda: dk.supcon_loss(F3[:1, :1]), ValueError, r"features needs at least 2 rows"),
    (lambda: dk.supcon_loss(F3, LAB[:3]), ValueError, r"labels must have shape \(4,\).*got shape \(3,\)"),
    (lambda: dk.supcon_loss(F3, LAB[:, None]), ValueError, r"labels must have shape \(4,\).*\(4, 1\)"),
    (lambda: dk.supcon_loss(F3, LAB.float()), TypeError, r"labels must be an integer tensor.*float32"),
    (lambda: dk.supcon_loss(F3, LAB.bool()), TypeError, r"labels must be an integer tensor.*bool"),
    (lambda: dk.supcon_loss(F3, [0, 1, 0, 1]), TypeError, r"labels must be a torch.Tensor"),
    (lambda: dk.supcon_loss(F3, torch.tensor([0, -1, 0, 1])), ValueError, r"labels must be >= 0, got a minimum of -1"),
    (lambda: dk.supcon_loss(F3, LAB.to("meta")), ValueError, r"labels must be on the features' device"),
    (lambda: dk.supcon_loss(F3, temperature=0), ValueError, r"temperature must be a finite number > 0, got 0"),
    (lambda: dk.supcon_loss(F3, temperature=-0.1), ValueError, r"temperature must be a finite number > 0"),
    (lambda: dk.supcon_loss(F3, temperature=math.inf), ValueError, r"temperature must be a finite number > 0"),
    (lambda: dk.supcon_loss(F3, base_temperature=math.nan), ValueError, r"base_temperature must be a finite"),
    (lambda: dk.supcon_loss(F3, contrast_mode="two"), ValueError, r"contrast_mode must be one of 'all', 'one'"),
    (lambda: dk.supcon_loss(F3, return_terms=1), TypeError, r"return_terms must be a bool"),
    (lambda: dk.supcon_loss(F3, gather_distributed="yes"), TypeError, r"gather_distributed must be a bool"),
    (lambda: dk.supcon_loss(F3, backend="gpu"), ValueError, r"backend must be one of"),
    (lambda: dk.moco_loss(Z, Z, torch.randn(5, 4, generator=gen(1))), ValueError,
     r"queue must have the queries' dimension D=3"),
    (lambda: dk.moco_loss(Z, Z, torch.randn(5, 3, generator=gen(1)).double()), ValueError,
     r"query and queue must have the same dtype"),
    (lambda: dk.moco_loss(Z, Z, torch.randn(5, 3, device="meta")), ValueError,
     r"query and queue must be on the same device"),
    (lambda: dk.moco_loss(Z, Z, torch.randn(0, 3, generator=gen(1))), ValueError, r"queue needs at least 1 rows"),
    (lambda: dk.moco_loss(Z, Z, torch.randn(5, generator=gen(1))), ValueError, r"queue must be 2-D"),
    (lambda: dk.moco_loss(Z, Z[:3], torch.randn(5, 3, generator=gen(1))), ValueError,
     r"query and key must have the same shape"),
    (lambda: dk.moco_loss(Z, Z.double(), torch.randn(5, 3, generator=gen(1))), ValueError,
     r"query and key must have the same dtype"),
    (lambda: dk.moco_loss(Z.int(), Z.int(), torch.randn(5, 3, generator=gen(1))), TypeError,
     r"query must be a floating-point"),
    (lambda: dk.moco_loss(Z, Z, torch.randn(5, 3, generator=gen(1)), temperature=0), ValueError,
     r"temperature must be a finite"),
    (lambda: dk.hard_negative_ntxent_loss(Z, Z, tau_plus=1.0), ValueError, r"tau_plus must be in \[0, 1\).*1\.0"),
    (lambda: dk.hard_negative_ntxent_loss(Z, Z, tau_plus=-0.1), ValueError, r"tau_plus must be in \[0, 1\)"),
    (lambda: dk.hard_negative_ntxent_loss(Z, Z, tau_plus=math.nan), ValueError, r"tau_plus must be finite"),
    (lambda: dk.hard_negative_ntxent_loss(Z, Z, temperature=-1), ValueError, r"temperature must be a finite"),
    (lambda: dk.hard_negative_ntxent_loss(Z, Z, beta=math.inf), ValueError, r"beta must be finite"),
    (lambda: dk.hard_negative_ntxent_loss(Z, Z, beta="1"), TypeError, r"beta must be a real number"),
    (lambda: dk.hard_negative_ntxent_loss(Z[:1], Z[:1]), ValueError, r"z1 needs at least 2 rows.*M = 2N - 2"),
    (lambda: dk.hard_negative_ntxent_loss(Z, Z.T), ValueError, r"z1 and z2 must have the same shape"),
    (lambda: dk.hard_negative_ntxent_loss(Z.bool(), Z.bool()), TypeError, r"z1 must be a floating-point"),
])
def test_bad_input_raises(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_module_constructors_validate_with_their_names():
    for make, exc, pattern in [
        (lambda: dk.SupConLoss(temperature=0), ValueError, r"temperature must be a finite number > 0"),
        (lambda: dk.SupConLoss(contrast_mode="ONE"), ValueError, r"contrast_mode must be one of"),
        (lambda: dk.SupConLoss(base_temperature=-2), ValueError, r"base_temperature must be a finite"),
        (lambda: dk.SupConLoss(return_terms="no"), TypeError, r"return_terms must be a bool"),
        (lambda: dk.SupConLoss(backend="x"), ValueError, r"backend must be one of"),
        (lambda: dk.MoCoLoss(temperature=math.nan), ValueError, r"temperature must be a finite"),
        (lambda: dk.HardNegativeNTXentLoss(tau_plus=1.5), ValueError, r"tau_plus must be in \[0, 1\)"),
        (lambda: dk.HardNegativeNTXentLoss(beta=math.nan), ValueError, r"beta must be finite"),
        (lambda: dk.HardNegativeNTXentLoss(gather_distributed=1), TypeError, r"gather_distributed must be a bool"),
        (lambda: dk.DCLWLoss(sigma=0), ValueError, r"sigma must be a finite number > 0"),
        (lambda: dk.DCLLoss(weight_fn=3), TypeError, r"weight_fn must be None or a callable"),
    ]:
        with pytest.raises(exc, match=pattern):
            make()
    with pytest.raises(ValueError, match=r"mask is not supported"):
        dk.SupConLoss()(F3, mask=torch.eye(4))


def test_modules_equal_functions():
    f = features(6, 2, 5, seed=30)
    lab = labels_of(6, 2, seed=30)
    assert torch.equal(dk.SupConLoss(0.2, "one", 0.1)(f, lab), dk.supcon_loss(f, lab, 0.2, 0.1, "one"))
    loss, terms = dk.SupConLoss(return_terms=True)(f, lab)
    assert torch.equal(loss, dk.supcon_loss(f, lab)) and "anchors_without_positive" in terms
    z1, z2 = pair(6, 5, seed=30)
    queue = torch.randn(9, 5, generator=gen(30), dtype=torch.float64)
    assert torch.equal(dk.MoCoLoss(0.3)(z1, z2, queue), dk.moco_loss(z1, z2, queue, 0.3))
    assert torch.equal(dk.HardNegativeNTXentLoss(0.4, 0.2, 0.5)(z1, z2),
                       dk.hard_negative_ntxent_loss(z1, z2, 0.4, 0.2, 0.5))


@pytest.mark.parametrize("backend", ["cuda"])  # triton implements them: tests/test_supervised_triton.py
def test_compiled_backends_say_they_do_not_implement_these(backend):
    z1, z2 = pair(4, 3, seed=31, dtype=torch.float32)
    calls = {
        "supcon_loss": lambda: dk.supcon_loss(F3, LAB, backend=backend),
        "moco_loss": lambda: dk.moco_loss(z1, z2, z1, backend=backend),
        "hard_negative_ntxent_loss": lambda: dk.hard_negative_ntxent_loss(z1, z2, backend=backend),
    }
    for name, call in calls.items():
        with pytest.raises(dk.BackendUnavailableError, match=rf"backend='{backend}' does not implement {name} in this "
                                                             r"version.*use backend='torch' or 'auto'"):
            call()


def test_auto_and_torch_backends_agree(monkeypatch):
    monkeypatch.delenv("DUALITY_KERNELS_BACKEND", raising=False)
    z1, z2 = pair(5, 3, seed=32)
    f = features(5, 2, 3, seed=32)
    for fn in (lambda be: dk.supcon_loss(f, None, backend=be), lambda be: dk.moco_loss(z1, z2, z2, backend=be),
               lambda be: dk.hard_negative_ntxent_loss(z1, z2, backend=be)):
        assert torch.equal(fn("auto"), fn("torch"))


def test_gather_without_a_group_is_one_process():
    f = features(5, 2, 3, seed=33)
    lab = labels_of(5, 2, seed=33)
    z1, z2 = pair(5, 3, seed=33)
    assert torch.equal(dk.supcon_loss(f, lab, gather_distributed=True), dk.supcon_loss(f, lab))
    assert torch.equal(dk.hard_negative_ntxent_loss(z1, z2, gather_distributed=True),
                       dk.hard_negative_ntxent_loss(z1, z2))


# ------------------------------------------------------------------------------------------
# docs/spec.md §5 with gloo processes

B_LOCAL, D_IN, D_OUT = 3, 5, 4


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 6), torch.nn.Tanh(), torch.nn.Linear(6, D_OUT)).double()


def _dist_data(world):
    g = gen(4321 + world)
    x = torch.randn(world * B_LOCAL, 2, D_IN, generator=g, dtype=torch.float64)
    x[:, 1] = x[:, 0] + 0.4 * x[:, 1]
    labels = torch.randint(0, 3, (world * B_LOCAL,), generator=g)
    labels[0] = 7  # a class of its own: with V = 1 its anchor has no positive
    return x, labels


def _dist_cases(labels):
    return {
        "supcon-labels": lambda x, lab: dk.supcon_loss(x, lab, 0.3, 0.2, gather_distributed=True),
        "supcon-none": lambda x, lab: dk.supcon_loss(x, None, 0.3, gather_distributed=True),
        "supcon-one": lambda x, lab: dk.supcon_loss(x, lab, 0.3, contrast_mode="one", gather_distributed=True),
        "supcon-v1": lambda x, lab: dk.supcon_loss(x[:, :1], lab, 0.3, gather_distributed=True),
        "hcl": lambda x, lab: dk.hard_negative_ntxent_loss(x[:, 0], x[:, 1], 0.5, 0.1, 1.0, gather_distributed=True),
        "hcl-beta0": lambda x, lab: dk.hard_negative_ntxent_loss(x[:, 0], x[:, 1], 0.3, 0.2, 0.0,
                                                                 gather_distributed=True),
    }


def _init(rank, world, init_file, timeout_s):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _apply(model, x):
    return model(x.reshape(-1, D_IN)).reshape(x.shape[0], x.shape[1], D_OUT)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    _init(rank, world, init_file, 60)
    x, labels = _dist_data(world)
    sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    results = ddp_results(_dist_cases(labels), _model, lambda m: (_apply(m, x[sl]), labels[sl]))
    _, terms = dk.supcon_loss(_apply(_model(), x[sl])[:, :1], labels[sl], gather_distributed=True, return_terms=True)
    results["no_positive"] = terms["anchors_without_positive"]
    save_rank(out_dir, rank, results)


def _worker_mismatch(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    _init(rank, world, init_file, 60)
    f = features(B_LOCAL, 2, D_OUT, seed=rank)
    try:
        dk.supcon_loss(f, LAB[:B_LOCAL] if rank == 0 else None, gather_distributed=True)
        msg = "no error"
    except Exception as err:  # noqa: BLE001 - the test reads the type and message
        msg = f"{type(err).__name__}: {err}"
    pathlib.Path(out_dir, f"rank{rank}.txt").write_text(msg)
    dist.destroy_process_group()


_spawn = spawn


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_gathered_losses_and_ddp_gradients_equal_global_batch(world):
    ranks = rank_results(_worker, world)
    x, labels = _dist_data(world)
    for name, fn in _dist_cases(labels).items():
        model = _model()
        loss = fn(_apply(model, x), labels)
        loss.backward()
        assert_matches_global(name, [r[name][0] for r in ranks], [r[name][1] for r in ranks], loss, model,
                              atol=1e-12)
    # the single-process value is the official one on the concatenated batch
    with torch.no_grad():
        f = _apply(_model(), x)
    assert_close(dk.supcon_loss(f, labels, 0.3, 0.2), O.supcon(f, labels, 0.3, 0.2), "global supcon")
    _, terms = dk.supcon_loss(f[:, :1], labels, return_terms=True)
    assert sum(int(r["no_positive"]) for r in ranks) == int(terms["anchors_without_positive"]) >= 1


@pytest.mark.distributed
def test_gathered_supcon_labels_on_one_rank_only_raises():
    with tempfile.TemporaryDirectory() as tmp:
        _spawn(_worker_mismatch, 2, (os.path.join(tmp, "init"), tmp), limit_s=90)
        msgs = [pathlib.Path(tmp, f"rank{r}.txt").read_text() for r in range(2)]
    for msg in msgs:
        assert re.search(r"ValueError: .*labels-or-None on every rank.*labels given.*labels None", msg), msg
