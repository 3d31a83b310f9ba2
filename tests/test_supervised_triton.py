"""The Triton ops of SupCon, MoCo and the hard-negative NT-Xent (ops/triton/lse/supervised.py), under
the interpreter: values and gradients against the float64 official transcriptions and the reference,
the accuracy rule in fp32/bf16, odd shapes, low temperatures, the custom ops (opcheck, compile), the
cross-cutting rules of docs/spec.md §8, bad input, and docs/spec.md §5 with 2 and 3 gloo processes."""

import os

import pytest
import torch

import duality_kernels as dk
from duality_kernels.ops import registry
from duality_kernels.testing import official_supervised as O

from .dist_util import assert_cases_match_global, ddp_results, rank_results, save_rank
from .test_supervised import (B_LOCAL, _accuracy, _apply, _dist_data, _init, _model, compare, features, gen,
                              labels_of, pair)

T = "triton"


def _queue(k, d, seed, dtype=torch.float64):
    return torch.randn(k, d, generator=gen(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------------
# float64: the official code and the reference, values and gradients, ~1e-12 relative


# N, D, K (K = 37: split + rest; D = 40: the stripe backward)
@pytest.mark.parametrize("shape", [(7, 5, 37), (5, 3, 16), (1, 1, 1), (3, 1, 9), (4, 40, 13)])
def test_moco_float64(shape):
    n, d, k = shape
    q, key = pair(n, d, seed=n + k)
    queue = _queue(k, d, seed=k)
    compare(lambda a, b: dk.moco_loss(a, b, queue, 0.2, backend=T), lambda a, b: O.moco(a, b, queue, 0.2), [q, key],
            f"moco{shape}")
    compare(lambda a, b: dk.moco_loss(a, b, queue, 0.2, backend=T),
            lambda a, b: dk.moco_loss(a, b, queue, 0.2, backend="torch"), [q, key], f"moco{shape} vs reference")


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_memory_bank_form(reduction):
    """lightly's memory-bank NT-Xent (the MoCo op with the bank's rows used as they are, any
    reduction): the torch reference's values and gradients, float64."""
    from duality_kernels.functional import supervised as FS

    z1, z2 = pair(6, 5, seed=56)
    bank = torch.nn.functional.normalize(_queue(19, 5, seed=56), dim=1) * 0.9  # not unit rows: no l2n inside
    w = torch.randn(6, generator=gen(57), dtype=torch.float64)

    def run(be):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        out = FS.memory_bank_ntxent(a, b, bank, 0.3, reduction, be)
        (out * w).sum().backward() if reduction == "none" else out.backward()
        return out.detach(), a.grad, b.grad

    for ours, ref in zip(run(T), run("torch")):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("params", [(0.5, 0.1, 1.0), (0.3, 0.2, 0.0), (0.4, 0.0, 0.5), (0.5, 0.1, -0.5)])
@pytest.mark.parametrize("shape", [(7, 5), (2, 3), (5, 1)])
def test_hard_negative_float64(shape, params):
    z1, z2 = pair(*shape, seed=sum(shape))
    compare(lambda a, b: dk.hard_negative_ntxent_loss(a, b, *params, backend=T), lambda a, b: O.hcl(a, b, *params),
            [z1, z2], f"hcl{shape}{params}")


def test_hard_negative_sweeps(monkeypatch):
    """The backward's two scales in one sweep (the fused kernel's DUAL mode) or in two (the stripe
    path, D above the fused kernel's K): the same gradients; D = 40 takes the stripe path here."""
    from duality_kernels.ops.triton.lse import supervised as TS

    z1, z2 = pair(6, 5, seed=9)
    a = z1.clone().requires_grad_()
    dk.hard_negative_ntxent_loss(a, z2, 0.4, 0.1, 0.7, backend=T).backward()
    monkeypatch.setattr(TS, "dual_fused", lambda dtype, k: False)
    b = z1.clone().requires_grad_()
    dk.hard_negative_ntxent_loss(b, z2, 0.4, 0.1, 0.7, backend=T).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-13, atol=1e-15)
    monkeypatch.undo()
    z1, z2 = pair(5, 40, seed=10)
    compare(lambda a, b: dk.hard_negative_ntxent_loss(a, b, 0.4, 0.1, 0.7, backend=T),
            lambda a, b: O.hcl(a, b, 0.4, 0.1, 0.7), [z1, z2], "hcl D=40")


def test_hard_negative_clamp_branch():
    """Aligned views at tau_plus = 0.5: the debiased estimate drops below the clamp M·e^{−1/t} for
    some anchors (the floor's own gradient path) and not for others."""
    z1, z2 = pair(6, 4, seed=5)
    z2 = z1 + 0.05 * z2
    for params in ((0.5, 0.5, 1.0), (0.5, 0.9, 0.0)):
        compare(lambda a, b: dk.hard_negative_ntxent_loss(a, b, *params, backend=T),
                lambda a, b: O.hcl(a, b, *params), [z1, z2], f"hcl clamp {params}")


SUPCON_CASES = {  # (B, V, D, labels)
    "labels": (6, 2, 5, "labels"),
    "simclr": (5, 3, 4, None),
    "v1-singletons": (5, 1, 3, "singletons"),
    "one-class": (4, 2, 3, "one"),
    "b2": (2, 2, 1, "labels"),
    "v1-pairs": (4, 1, 6, "labels"),
    "wide": (3, 2, 40, "labels"),  # D above the interpreter's fused K: the stripe backward
}


def _labels(b, kind, seed):
    if kind is None:
        return None
    if kind == "singletons":
        return torch.arange(b)
    if kind == "one":
        return torch.zeros(b, dtype=torch.int64)
    return labels_of(b, 2, seed=seed)


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("case", list(SUPCON_CASES))
def test_supcon_float64(case, mode):
    b, v, d, kind = SUPCON_CASES[case]
    f = features(b, v, d, seed=b + d)
    lab = _labels(b, kind, seed=b)
    compare(lambda x: dk.supcon_loss(x, lab, 0.1, 0.07, mode, backend=T), lambda x: O.supcon(x, lab, 0.1, 0.07, mode),
            [f], f"supcon {case} {mode}")
    _, ours = dk.supcon_loss(f, lab, contrast_mode=mode, return_terms=True, backend=T)
    _, ref = dk.supcon_loss(f, lab, contrast_mode=mode, return_terms=True, backend="torch")
    assert int(ours["anchors_without_positive"]) == int(ref["anchors_without_positive"])
    assert ours["anchors_without_positive"].dtype == torch.int64


# ------------------------------------------------------------------------------------------
# fp32 / bf16: the accuracy rule against the official code's own error (test_supervised's _accuracy)


# bf16 dots are wrong under the interpreter (numpy has no bf16; the family's bf16 tests are GPU tests):
# fp16 takes the same path here (operands as they are, the l2 scales on the fp32 tile)
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16,
                                   pytest.param(torch.bfloat16, marks=[pytest.mark.cuda, pytest.mark.skipif(
                                       _INTERPRETED, reason="bf16 needs the GPU (interpreter: numpy)")])])
def test_accuracy_low_precision(dtype):
    f = features(9, 2, 7, seed=41, dtype=dtype)
    lab = labels_of(9, 3, seed=41)
    _accuracy(lambda x: dk.supcon_loss(x, lab, 0.1, 0.07, backend=T), lambda x: O.supcon(x, lab, 0.1, 0.07), [f])
    q, key = pair(6, 7, seed=42, dtype=dtype)
    queue = _queue(20, 7, seed=42, dtype=dtype)
    _accuracy(lambda a, b: dk.moco_loss(a, b, queue, 0.07, backend=T),
              lambda a, b: O.moco(a, b, queue.to(a.dtype), 0.07), [q, key])
    z1, z2 = pair(9, 7, seed=43, dtype=dtype)
    _accuracy(lambda a, b: dk.hard_negative_ntxent_loss(a, b, 0.2, 0.1, 1.0, backend=T),
              lambda a, b: O.hcl(a, b, 0.2, 0.1, 1.0), [z1, z2])


@pytest.mark.parametrize("temperature", [0.01, 0.005])
def test_low_temperatures_are_finite(temperature):
    """Aligned views at low temperatures, fp32: finite values and gradients, close to float64."""
    z1, z2 = pair(6, 5, seed=44, dtype=torch.float32)
    z2 = z1 + 0.01 * z2
    f = torch.stack([z1, z2], 1)
    lab = labels_of(6, 2, seed=44)
    calls = {
        "supcon": (lambda x, y: dk.supcon_loss(torch.stack([x, y], 1), lab, temperature, backend=T),
                   lambda x, y: O.supcon(torch.stack([x, y], 1), lab, temperature, temperature)),
        "moco": (lambda x, y: dk.moco_loss(x, y, f[:, 1].flip(0), temperature, backend=T),
                 lambda x, y: O.moco(x, y, f[:, 1].flip(0).double(), temperature)),
        "hcl": (lambda x, y: dk.hard_negative_ntxent_loss(x, y, temperature, 0.1, 1.0, backend=T),
                lambda x, y: O.hcl(x, y, temperature, 0.1, 1.0)),
    }
    for name, (ours, official) in calls.items():
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        out = ours(a, b)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all(), name
        if name != "supcon":  # SupCon's official code has T_b = T here; its value only
            truth = official(z1.double(), z2.double())
            assert abs(out.item() - truth.item()) <= 1e-4 * max(1.0, abs(truth.item())), (name, out, truth)


# ------------------------------------------------------------------------------------------
# the custom ops


def _op_cases():
    q, key = pair(5, 4, seed=50)
    f = features(4, 2, 3, seed=51)
    lab = labels_of(4, 2, seed=51)
    return {
        "moco": (q, key, _queue(11, 4, seed=50), 0.2, "none", False),
        "hard_negative_ntxent": (q, key, 0.5, 0.1, 1.0),
        "supcon": (f, lab, 0.1, 0.07, "all"),
    }


@pytest.mark.parametrize("name", ["moco", "hard_negative_ntxent", "supcon"])
def test_opcheck(name):
    reg = registry.registered(T, name)
    args = tuple(x.clone().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() and i < 2
                 else x for i, x in enumerate(_op_cases()[name]))
    torch.library.opcheck(reg.fwd, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("name", ["moco_loss", "hard_negative_ntxent_loss", "supcon_loss"])
def test_compile_fullgraph(name, dynamic):
    z1, z2 = pair(5, 4, seed=52)
    queue = _queue(9, 4, seed=52)
    lab = labels_of(5, 2, seed=52)
    fn = {"moco_loss": lambda a, b: dk.moco_loss(a, b, queue, 0.2, backend=T),
          "hard_negative_ntxent_loss": lambda a, b: dk.hard_negative_ntxent_loss(a, b, backend=T),
          "supcon_loss": lambda a, b: dk.supcon_loss(torch.stack([a, b], 1), lab, backend=T)}[name]
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    out = compiled(a, b)
    out.backward()
    a2, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    want = fn(a2, b2)
    want.backward()
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-12, atol=1e-12)


def test_dropin_functions_and_no_queue_gradient():
    q, key = pair(5, 4, seed=53)
    queue = _queue(9, 4, seed=53).requires_grad_()
    loss = registry.registered(T, "moco").function.apply(q, key, queue, 0.2, "mean", True)[0]
    torch.testing.assert_close(loss, O.moco(q, key, queue, 0.2), rtol=1e-12, atol=0)
    a = q.clone().requires_grad_()
    dk.moco_loss(a, key, queue, 0.2, backend=T).backward()
    assert queue.grad is None and a.grad is not None
    with pytest.raises(ValueError, match="temperature"):
        registry.registered(T, "hard_negative_ntxent").function.apply(q, key, 0.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="features must be 3-D"):
        registry.registered(T, "supcon").function.apply(q, None, 0.1, 0.1, "all")


def _fns(z2, lab, queue):
    return [lambda a: dk.moco_loss(a, z2, queue, backend=T), lambda a: dk.hard_negative_ntxent_loss(a, z2, backend=T),
            lambda a: dk.supcon_loss(torch.stack([a, z2], 1), lab, backend=T)]


def test_double_backward_transforms_and_autocast():
    """docs/spec.md §8 on these ops: double backward and torch.func raise naming backend='torch';
    autocast does not reach inside (fp32 in, fp32 out, the same bits)."""
    z1, z2 = pair(5, 4, seed=54)
    lab = labels_of(5, 2, seed=54)
    queue = _queue(7, 4, seed=54)
    for fn in _fns(z2, lab, queue):
        a = z1.clone().requires_grad_()
        with pytest.raises(RuntimeError, match="backend='torch'"):
            (g,) = torch.autograd.grad(fn(a), a, create_graph=True)
            torch.autograd.grad((g * g).sum(), a)
        with pytest.raises(NotImplementedError, match="backend='torch'"):
            torch.func.grad(fn)(z1)
    for fn in _fns(z2.float(), lab, queue.float()):
        want = fn(z1.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fn(z1.float())
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# bad input on the triton backend


def test_bad_input_raises_before_any_kernel():
    z1, z2 = pair(4, 3, seed=55)
    f = features(4, 2, 3, seed=55)
    cases = [
        (lambda: dk.supcon_loss(z1, backend=T), ValueError, "features must be 3-D"),
        (lambda: dk.supcon_loss(f, torch.tensor([0, 1, 2]), backend=T), ValueError, r"labels must have shape \(4,\)"),
        (lambda: dk.supcon_loss(f, torch.tensor([0, -1, 2, 1]), backend=T), ValueError, "labels must be >= 0"),
        (lambda: dk.supcon_loss(f, torch.ones(4), backend=T), TypeError, "labels must be an integer tensor"),
        (lambda: dk.supcon_loss(f, temperature=0.0, backend=T), ValueError, "temperature"),
        (lambda: dk.moco_loss(z1, z2, torch.zeros(5, 4, dtype=z1.dtype), backend=T), ValueError, "queue must have"),
        (lambda: dk.moco_loss(z1, z2, z1.float(), backend=T), ValueError, "same dtype"),
        (lambda: dk.moco_loss(z1, z2, z1, temperature=-1.0, backend=T), ValueError, "temperature"),
        (lambda: dk.hard_negative_ntxent_loss(z1, z2, tau_plus=1.0, backend=T), ValueError, "tau_plus"),
        (lambda: dk.hard_negative_ntxent_loss(z1[:1], z2[:1], backend=T), ValueError, "negative"),
        (lambda: dk.hard_negative_ntxent_loss(z1, z2, beta=float("nan"), backend=T), ValueError, "beta"),
    ]
    for call, err, msg in cases:
        with pytest.raises(err, match=msg):
            call()


# ------------------------------------------------------------------------------------------
# docs/spec.md §5 on triton: 2 and 3 gloo processes against the global batch on one process


def _cases():
    return {
        "supcon-labels": lambda x, lab, be: dk.supcon_loss(x, lab, 0.3, 0.2, gather_distributed=True, backend=be),
        "supcon-none-one": lambda x, lab, be: dk.supcon_loss(x, None, 0.3, contrast_mode="one",
                                                             gather_distributed=True, backend=be),
        "supcon-v1": lambda x, lab, be: dk.supcon_loss(x[:, :1], lab, 0.3, gather_distributed=True, backend=be),
        "hcl": lambda x, lab, be: dk.hard_negative_ntxent_loss(x[:, 0], x[:, 1], 0.5, 0.1, 1.0,
                                                               gather_distributed=True, backend=be),
        "hcl-beta0": lambda x, lab, be: dk.hard_negative_ntxent_loss(x[:, 0], x[:, 1], 0.3, 0.2, 0.0,
                                                                     gather_distributed=True, backend=be),
    }


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    _init(rank, world, init_file, 120)
    x, labels = _dist_data(world)
    sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    results = ddp_results(_cases(), _model, lambda m: (_apply(m, x[sl]), labels[sl], T))
    _, terms = dk.supcon_loss(_apply(_model(), x[sl])[:, :1], labels[sl], gather_distributed=True, return_terms=True,
                              backend=T)
    results["no_positive"] = terms["anchors_without_positive"]
    save_rank(out_dir, rank, results)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_gathered_triton_equals_global_batch(world):
    ranks = rank_results(_worker, world)
    x, labels = _dist_data(world)

    def global_loss(fn):
        model = _model()
        return fn(_apply(model, x), labels, "torch"), model
    assert_cases_match_global(ranks, _cases(), global_loss, atol=1e-12)
    with torch.no_grad():
        f = _apply(_model(), x)
    _, terms = dk.supcon_loss(f[:, :1], labels, return_terms=True)
    assert sum(int(r["no_positive"]) for r in ranks) == int(terms["anchors_without_positive"]) >= 1
