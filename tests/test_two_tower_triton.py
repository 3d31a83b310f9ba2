"""clip_loss / siglip_loss on backend="triton" (docs/spec.md §7.4-§7.5; ops/triton/lse/two_tower*.py)
against the float64 transcriptions of open_clip's ClipLoss and SigLipLoss
(duality_kernels/testing/official_two_tower.py) and the torch reference: values and gradients of
the features, the scale and the bias; the accuracy rule (docs/design.md convention 5) at CLIP's
clamp s = 100 and SigLIP's bias t = −10; shapes that are not multiples of the tiles; the custom
ops (opcheck, torch.compile); bad input; open_clip's local loss with 2 and 3 gloo processes.
Under the Triton interpreter on CPU tensors; bf16 (whose interpreted dot is not bf16) on a GPU only.
"""


import pytest
import torch

import duality_kernels as dk
from duality_kernels.testing import official_two_tower as O

from .accuracy import _check, views
from .dist_util import init_gloo, rank_results, save_rank

pytest.importorskip("triton")
lse = pytest.importorskip("duality_kernels.ops.triton.lse")
T = lse.two_tower
TS = lse.two_tower_siglip

SCALE = 1 / 0.07   # CLIP's initial exp(logit_scale), not a float32 number
BIAS = -10 / 3
# N = 1, D = 1, N past the interpreter's 32-row tiles without being a multiple of them, and D past its
# 32-column gradient blocks (the column-split backward and its l2 Jacobian pass, two_tower.bwd_plan)
SHAPES = [(1, 1), (2, 1), (1, 5), (7, 13), (37, 6), (33, 29), (9, 37)]


def _pair(n, d, dtype=torch.float64, seed=0):
    a, b = views(n, d, torch.float64, seed, "cpu")
    return a.to(dtype), (2.5 * b).to(dtype)  # rows of different norms: the normalization is tested too


def _grads(fn, tensors, *others):
    xs = [x.detach().clone().requires_grad_() for x in tensors]
    value = fn(*xs, *others)
    return [value.detach(), *torch.autograd.grad(value, xs)]


def _assert_rel(got, want, rtol, what):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, got.dtype, want.shape, want.dtype)
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rtol * want.abs().max().item() + 1e-13, f"{what}: max error {err:.3e}"


def _clip(be):
    return lambda a, b, *s: dk.clip_loss(a, b, *s, backend=be)


def _siglip(be):
    return lambda a, b, *st: dk.siglip_loss(a, b, *st, backend=be)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("scalars", ["float", "tensor"])
def test_float64_matches_open_clip_and_reference(n, d, scalars):
    a, b = _pair(n, d, seed=10 * n + d)
    for fn, official, values in ((_clip, O.clip_official, (SCALE,)), (_siglip, O.siglip_official, (SCALE, BIAS))):
        if scalars == "float":
            tensors, others = [a, b], values
        else:
            tensors, others = [a, b, *(torch.tensor(v, dtype=torch.float64) for v in values)], ()
        got = _grads(fn("triton"), tensors, *others)
        for want, who in ((_grads(official, tensors, *others), "official"), (_grads(fn("torch"), tensors, *others),
                                                                             "reference")):
            for i, (x, y) in enumerate(zip(got, want)):
                _assert_rel(x, y, 1e-12, f"{official.__name__} vs {who}, item {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,d", [(40, 24), (17, 41)])  # 41: the column-split backward
def test_accuracy_rule_at_extreme_scale_and_bias(dtype, n, d):
    """s = 100 (CLIP's clamp) and t = −10 (SigLIP's init) as float32 tensors (as under AMP) and as
    floats: within 2× (values) and 3× (gradients, scale and bias included) eager's error."""
    a, b = views(n, d, torch.float64, n + d, "cpu")
    a, b = a.to(dtype), b.to(dtype)
    s, t = torch.tensor(100.0), torch.tensor(-10.0)
    _check(_clip("triton"), O.clip_official, [a, b, s])
    _check(_siglip("triton"), O.siglip_official, [a, b, s, t])
    _check(lambda x, y: dk.clip_loss(x, y, 100.0, backend="triton"), lambda x, y: O.clip_official(x, y, 100.0), [a, b])
    _check(lambda x, y: dk.siglip_loss(x, y, 100.0, -10.0, backend="triton"),
           lambda x, y: O.siglip_official(x, y, 100.0, -10.0), [a, b])


def test_tf32_operands_are_rounded():
    """Under "high" (TF32, docs/design.md convention 16) both losses match a float64 evaluation on the
    TF32-rounded normalized rows (what the GPU's tensor cores compute) far closer than the exact loss."""
    import torch.nn.functional as F

    from duality_kernels.reference import l2n

    from .test_triton_lse import _rna_tf32_bits

    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(24, 20, generator=g) for _ in range(2))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        ours = [dk.clip_loss(a, b, 14.3, backend="triton"), dk.siglip_loss(a, b, 14.3, -1.0, backend="triton")]
    finally:
        torch.set_float32_matmul_precision(previous)
    logits = 14.3 * _rna_tf32_bits(l2n(a)).double() @ _rna_tf32_bits(l2n(b)).double().T
    labels = torch.arange(24)
    y = 2 * torch.eye(24, dtype=torch.float64) - 1
    tf32 = [(F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2,
            -F.logsigmoid(y * (logits - 1.0)).sum() / 24]
    exact = [O.clip_official(a.double(), b.double(), 14.3), O.siglip_official(a.double(), b.double(), 14.3, -1.0)]
    for k, t, e in zip(ours, tf32, exact):
        assert abs(k.item() - t.item()) < 2e-5 < abs(e.item() - t.item()), (k.item(), t.item(), e.item())


def test_scale_gradients_keep_the_callers_shape_and_dtype_and_float_equals_tensor():
    a, b = _pair(9, 4)
    s, t = torch.full((1,), 20.0, requires_grad=True), torch.full((1, 1), -2.0, dtype=torch.float16,
                                                                   requires_grad=True)
    dk.clip_loss(a, b, s, backend="triton").backward()
    dk.siglip_loss(a, b, s, t, backend="triton").backward()
    assert s.grad.shape == (1,) and s.grad.dtype == torch.float32
    assert t.grad.shape == (1, 1) and t.grad.dtype == torch.float16
    assert torch.equal(dk.clip_loss(a, b, 20.0, backend="triton"),
                       dk.clip_loss(a, b, torch.tensor(20.0, dtype=torch.float64), backend="triton"))
    assert torch.equal(dk.siglip_loss(a, b, 20.0, None, backend="triton"),
                       dk.siglip_loss(a, b, 20.0, 0.0, backend="triton"))


def test_zero_row_and_noncontiguous_inputs():
    a, b = _pair(11, 8)
    a[3] = 0.0
    at, bt = a.T.contiguous().T, b.T.contiguous().T  # column-major rows
    for fn, official, others in ((_clip, O.clip_official, (SCALE,)), (_siglip, O.siglip_official, (SCALE, BIAS))):
        for x, y in zip(_grads(fn("triton"), [at, bt], *others), _grads(official, [a, b], *others)):
            _assert_rel(x, y, 1e-12, official.__name__)


def test_custom_ops_opcheck():
    a, b = _pair(5, 3)
    s, t = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(BIAS, dtype=torch.float64)
    torch.library.opcheck(T.clip_fwd, (a.requires_grad_(), b.requires_grad_(), s.requires_grad_()))
    torch.library.opcheck(TS.siglip_fwd, (a, torch.cat([b, b]).detach().requires_grad_(), s, t.requires_grad_(), 5))
    saved = T.clip_fwd(a.detach(), b.detach(), s.detach())
    one = torch.tensor(1.0, dtype=a.dtype)
    torch.library.opcheck(T.clip_bwd, (a.detach(), b.detach(), s.detach(), *saved[1:], one),
                          test_utils=("test_schema", "test_faketensor"))
    bb = torch.cat([b, b]).detach()
    saved = TS.siglip_fwd(a.detach(), bb, s.detach(), t.detach(), 5)
    torch.library.opcheck(TS.siglip_bwd, (a.detach(), bb, s.detach(), t.detach(), *saved[1:], one, 5),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph():
    a, b = _pair(9, 6)
    s, t = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(BIAS, dtype=torch.float64)

    def both(x, y, sc, bi):
        return dk.clip_loss(x, y, sc, backend="triton") + dk.siglip_loss(x, y, sc, bi, backend="triton")

    torch._dynamo.reset()
    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    for x, y in zip(_grads(compiled, [a, b, s, t]), _grads(both, [a, b, s, t])):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_drop_in_functions_and_modules():
    a, b = _pair(6, 4)
    s = torch.tensor(SCALE, dtype=torch.float64)
    assert torch.equal(T.ClipFunction.apply(a, b, s)[0], dk.clip_loss(a, b, s, backend="triton"))
    assert torch.equal(TS.SigLipFunction.apply(a, b, s, s, 0)[0], dk.siglip_loss(a, b, s, s, backend="triton"))
    assert torch.equal(dk.ClipLoss(backend="triton")(a, b, s), dk.clip_loss(a, b, s, backend="triton"))
    assert torch.equal(dk.SigLipLoss(backend="triton")(a, b, s, s), dk.siglip_loss(a, b, s, s, backend="triton"))
    with pytest.raises(ValueError, match="same number of rows"):
        T.ClipFunction.apply(a, b[:5], s)
    with pytest.raises(ValueError, match="offset must be an int with 0 <= offset <= 0"):
        TS.SigLipFunction.apply(a, b, s, s, 1)


def _bad(a, b):
    return [
        ((a, b[:3], 1.0), ValueError, r"same number of rows"),
        ((a, b[:, :2], 1.0), ValueError, r"same feature dimension"),
        ((a, b, 0.0), ValueError, r"logit_scale must be a finite number > 0, got 0.0"),
        ((a, b, -2.0), ValueError, r"logit_scale must be a finite number > 0, got -2.0"),
        ((a, b, torch.ones(2)), ValueError, r"logit_scale must be a Python float or a tensor with one element"),
        ((a, b, torch.tensor(1.0, device="meta")), ValueError, r"logit_scale must be on the features' device"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_input_raises_on_triton(case):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    args, err, pattern = _bad(a, b)[case]
    with pytest.raises(err, match=pattern):
        dk.clip_loss(*args, backend="triton")
    with pytest.raises(err, match=pattern):
        dk.siglip_loss(*args, -1.0, backend="triton")
    with pytest.raises(ValueError, match="logit_bias must be a Python float or a tensor with one element"):
        dk.siglip_loss(a, b, 1.0, torch.zeros(3), backend="triton")


# --------------------------------------------------------------------------------------------
# gather_distributed (docs/spec.md §5): open_clip's local loss, gradients through the gather

N_LOCAL, D = 5, 6


def _dist_data(world):
    g = torch.Generator().manual_seed(7 + world)
    a = torch.randn(world * N_LOCAL, D, generator=g, dtype=torch.float64)
    return a, a + 0.4 * torch.randn(world * N_LOCAL, D, generator=g, dtype=torch.float64)


def _dist_losses():
    return {"clip": lambda a, b, s, t, g: dk.clip_loss(a, b, s, gather_distributed=g, backend="triton"),
            "siglip": lambda a, b, s, t, g: dk.siglip_loss(a, b, s, t, gather_distributed=g, backend="triton")}


def _dist_worker(rank, world, init_file, out_dir):
    init_gloo(rank, world, init_file)
    a, b = _dist_data(world)
    own = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    results = {}
    for name, fn in _dist_losses().items():
        xs = [a[own].clone().requires_grad_(), b[own].clone().requires_grad_(),
              torch.tensor(SCALE, dtype=torch.float64, requires_grad=True),
              torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)]
        loss = fn(*xs, True)
        loss.backward()
        results[name] = [loss.detach()] + [x.grad if x.grad is not None else torch.zeros(()) for x in xs]
    save_rank(out_dir, rank, results)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_local_loss(world):
    """Each rank's loss is open_clip's on that rank; their mean is the global batch's loss; the
    ranks' feature gradients (summed through the gather) over W and their mean scale and bias
    gradients (what DDP averages) are the global batch's gradients."""
    ranks = rank_results(_dist_worker, world)
    a, b = _dist_data(world)
    s, t = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(BIAS, dtype=torch.float64)
    officials = {"clip": lambda r: O.clip_local_official(a, b, s, r, world),
                 "siglip": lambda r: O.siglip_local_official(a, b, s, t, r, world)}
    for name, fn in _dist_losses().items():
        for r in range(world):
            torch.testing.assert_close(ranks[r][name][0], officials[name](r), rtol=1e-10, atol=1e-12)
        scalars = [s, t] if name == "siglip" else [s]
        want = _grads(lambda x, y, sc, bi=t: fn(x, y, sc, bi, False), [a, b, *scalars])
        torch.testing.assert_close(torch.stack([res[name][0] for res in ranks]).mean(), want[0], rtol=1e-10, atol=0)
        for i in (1, 2):
            got = torch.cat([res[name][i] for res in ranks]) / world
            torch.testing.assert_close(got, want[i], rtol=1e-10, atol=1e-12, msg=f"{name}: features {i}")
        for i in range(3, 3 + len(scalars)):
            got = torch.stack([res[name][i] for res in ranks]).mean()
            torch.testing.assert_close(got, want[i], rtol=1e-10, atol=1e-12, msg=f"{name}: scalar {i}")
            assert got.abs() > 1e-6


# --------------------------------------------------------------------------------------------
# the GPU half (bf16 tensor-core dots; benchmarks/gpu_check.sh runs the cuda-marked tests)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n,d", [(1000, 512), (777, 100)])
def test_gpu_bf16_accuracy_rule(n, d):
    a, b = views(n, d, torch.float64, n + d, "cuda")
    a, b = a.bfloat16(), b.bfloat16()
    s, t = torch.tensor(100.0, device="cuda"), torch.tensor(-10.0, device="cuda")
    _check(_clip("triton"), O.clip_official, [a, b, s])
    _check(_siglip("triton"), O.siglip_official, [a, b, s, t])
