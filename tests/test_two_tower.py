"""clip_loss / siglip_loss and ClipLoss / SigLipLoss (docs/spec.md §7) against the transcriptions of
open_clip's ClipLoss and SigLipLoss in duality_kernels/testing/official_two_tower.py: values and gradients of the
features, the scale and the bias in float64 (~1e-12 relative), the reference's blocked (checkpointed)
path, extreme scale and bias in fp32 and bf16 under the accuracy rule (tests/accuracy.py), bad input,
backend selection, and open_clip's local-loss semantics with 2 and 3 gloo processes (docs/spec.md §5).
"""

import math

import pytest
import torch

import duality_kernels as dk
from duality_kernels import _backend
from duality_kernels.reference import two_tower as RT
from duality_kernels.testing import official_two_tower as O

from .accuracy import _check, views
from .dist_util import assert_matches_global, init_gloo, rank_results, save_rank

SCALE = 1 / 0.07   # CLIP's initial exp(logit_scale); not a float32 number
BIAS = -10 / 3     # not a float32 number either
SHAPES = [(1, 1), (1, 5), (2, 1), (2, 3), (3, 2), (5, 1), (7, 13), (13, 7), (31, 17)]


def _pair(n, d, dtype=torch.float64, seed=0):
    # image and text rows of different norms: the normalization inside is part of what is tested
    a, b = views(n, d, torch.float64, seed, "cpu")
    return a.to(dtype), (2.5 * b).to(dtype)


def _scalar(kind, value, dtype=torch.float64):
    """The scale or bias as the caller passes it: a float, a 0-dim tensor or a one-element tensor."""
    if kind == "float":
        return value
    shape = {"0-dim": (), "(1,)": (1,), "(1, 1)": (1, 1)}[kind]
    return torch.full(shape, value, dtype=dtype)


def _value_and_grads(fn, tensors, others=()):
    """fn(*tensors, *others) and the gradients of its value w.r.t. every tensor (scale/bias included)."""
    xs = [x.detach().clone().requires_grad_() for x in tensors]
    value = fn(*xs, *others)
    return value.detach(), list(torch.autograd.grad(value, xs))


def _assert_rel(got, want, rtol=1e-12, what=""):
    """|got − want| ≤ rtol·max|want| + 1e-13; the absolute part is for gradients that are 0 in exact
    arithmetic (D = 1: the normalized rows are ±1 whatever the input) and come out as the rounding
    of a projection that cancels terms of size ~s, a few ulps of 14.3 (~1e-15)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, got.dtype, want.shape, want.dtype)
    err = (got - want).abs().max().item() if got.numel() else 0.0
    scale = want.abs().max().item() if want.numel() else 0.0
    assert err <= rtol * scale + 1e-13, f"{what}: max error {err:.3e}, scale {scale:.3e}"


def _compare(ours, official, tensors, others_ours=(), others_official=()):
    v, g = _value_and_grads(ours, tensors, others_ours)
    w, h = _value_and_grads(official, tensors, others_official)
    _assert_rel(v, w, what="value")
    for i, (x, y) in enumerate(zip(g, h)):
        _assert_rel(x, y, what=f"gradient of input {i}")


# --------------------------------------------------------------------------------------------
# float64 against open_clip's math


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("kind", ["float", "0-dim", "(1,)"])
def test_clip_matches_open_clip_float64(n, d, kind):
    a, b = _pair(n, d, seed=n * 100 + d)
    if kind == "float":
        _compare(dk.clip_loss, O.clip_official, [a, b], (SCALE,), (SCALE,))
    else:
        _compare(dk.clip_loss, O.clip_official, [a, b, _scalar(kind, SCALE)])


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("kind", ["float", "0-dim", "(1, 1)"])
def test_siglip_matches_open_clip_float64(n, d, kind):
    a, b = _pair(n, d, seed=n * 100 + d)
    if kind == "float":
        _compare(dk.siglip_loss, O.siglip_official, [a, b], (SCALE, BIAS), (SCALE, BIAS))
    else:
        _compare(dk.siglip_loss, O.siglip_official, [a, b, _scalar(kind, SCALE), _scalar(kind, BIAS)])


def test_scale_and_bias_gradients_have_the_callers_shape_and_dtype():
    a, b = _pair(6, 4)
    for shape in [(), (1,), (1, 1)]:
        s = torch.full(shape, 3.0, dtype=torch.float32, requires_grad=True)   # an fp32 parameter, fp64 features
        t = torch.full(shape, -1.0, dtype=torch.float32, requires_grad=True)
        (dk.clip_loss(a, b, s) + dk.siglip_loss(a, b, s, t)).backward()
        assert s.grad.shape == shape and s.grad.dtype == torch.float32
        assert t.grad.shape == shape and t.grad.dtype == torch.float32
        # the scale's gradient is the sum of both losses', each against the transcription
        s64 = s.detach().double().reshape(()).requires_grad_()
        t64 = t.detach().double().reshape(()).requires_grad_()
        total = O.clip_official(a, b, s64) + O.siglip_official(a, b, s64, t64)
        gs, gt = torch.autograd.grad(total, [s64, t64])
        assert abs(s.grad.double().item() - gs.item()) <= 1e-6 * abs(gs.item())
        assert abs(t.grad.double().item() - gt.item()) <= 1e-6 * abs(gt.item())


def test_float_and_tensor_scale_agree():
    a, b = _pair(9, 5, torch.float32)
    s, t = torch.tensor(SCALE, dtype=torch.float32), torch.tensor(BIAS, dtype=torch.float32)
    torch.testing.assert_close(dk.clip_loss(a, b, SCALE), dk.clip_loss(a, b, s), rtol=1e-6, atol=0)
    torch.testing.assert_close(dk.siglip_loss(a, b, SCALE, BIAS), dk.siglip_loss(a, b, s, t), rtol=1e-6, atol=0)


def test_siglip_bias_none_is_no_bias():
    a, b = _pair(5, 3)
    assert torch.equal(dk.siglip_loss(a, b, SCALE, None), dk.siglip_loss(a, b, SCALE, 0.0))
    torch.testing.assert_close(dk.siglip_loss(a, b, SCALE, None), O.siglip_official(a, b, SCALE, None),
                               rtol=1e-12, atol=0)


def test_zero_row_and_noncontiguous_inputs():
    # a zero row normalizes to zero (F.normalize's eps), as in open_clip; strided views are accepted
    a, b = _pair(8, 12)
    a[3] = 0
    a_strided, b_strided = a[:, ::2], b.T.contiguous().T[:, 1::2]
    assert not a_strided.is_contiguous()
    _compare(dk.clip_loss, O.clip_official, [a_strided, b_strided, torch.tensor(SCALE, dtype=torch.float64)])
    _compare(dk.siglip_loss, O.siglip_official, [a_strided, b_strided, torch.tensor(SCALE, dtype=torch.float64),
                                                 torch.tensor(BIAS, dtype=torch.float64)])


def test_nan_propagates():
    a, b = _pair(4, 3)
    a[1, 2] = float("nan")
    assert torch.isnan(dk.clip_loss(a, b, SCALE)) and torch.isnan(dk.siglip_loss(a, b, SCALE, BIAS))


def test_output_dtypes_and_gradient_dtypes():
    for dtype, acc in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64)]:
        a, b = (x.requires_grad_() for x in _pair(6, 4, dtype))
        for loss in (dk.clip_loss(a, b, SCALE), dk.siglip_loss(a, b, SCALE, BIAS)):
            assert loss.dtype == acc and loss.shape == ()
            ga, gb = torch.autograd.grad(loss, [a, b])
            assert ga.dtype == dtype and gb.dtype == dtype


# --------------------------------------------------------------------------------------------
# the reference's blocks: exact, and no N×N tensor kept for autograd


@pytest.mark.parametrize("rows", [1, 3, 10, 11])
def test_blocked_reference_matches_open_clip(rows):
    a, b = _pair(11, 6, seed=rows)
    s, t = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(BIAS, dtype=torch.float64)
    _compare(lambda x, y, z: RT.clip(x, y, z, rows=rows), O.clip_official, [a, b, s])
    _compare(lambda x, y, z, w: RT.siglip(x, y, z, w, rows=rows), O.siglip_official, [a, b, s, t])


def test_blocked_reference_second_order():
    # the checkpointed blocks recompute under autograd, so double backward stays exact
    a, b = (x.requires_grad_() for x in _pair(5, 3, seed=7))
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, y, z: RT.clip(x, y, z, rows=2), (a, b, s))
    assert torch.autograd.gradgradcheck(lambda x, y, z, w: RT.siglip(x, y, z, w, rows=2), (a, b, s, t))


def test_blocked_reference_keeps_no_square_matrix():
    # autograd keeps the inputs, the normalized rows and the (N/rows)×N column partials, never N×N logits
    n, d, rows = 256, 8, 16
    a, b = (x.requires_grad_() for x in _pair(n, d, torch.float32))
    s = torch.tensor(SCALE, requires_grad=True)
    for fn in (lambda: RT.clip(a, b, s, rows=rows), lambda: RT.siglip(a, b, s, BIAS, rows=rows)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
            loss = fn()
        loss.backward()
        assert saved and max(saved) <= max(n * d, (n // rows) * n), sorted(saved)[-5:]
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_block_rows_bounds_the_logits():
    assert RT.block_rows(4096) == 4096            # up to 4096×4096 logits: one plain block
    assert RT.block_rows(65536) * 65536 <= RT.BLOCK_ELEMENTS
    assert RT.block_rows(10 ** 9) == 1 and RT.block_rows(7, rows=3) == 3


@pytest.mark.parametrize("block_elements", [RT.BLOCK_ELEMENTS, 16])
def test_compiles_fullgraph(monkeypatch, block_elements):
    # the plain path and the checkpointed blocks (16 logits: 2 rows per block) trace without graph breaks
    monkeypatch.setattr(RT, "BLOCK_ELEMENTS", block_elements)
    a, b = _pair(8, 4, torch.float32)
    s, t = torch.tensor(10.0), torch.tensor(-1.0)
    # (0 · the unused inputs: every input gets a gradient)
    for fn in (lambda x, y, z, w: dk.clip_loss(x, y, z) + 0 * w, lambda x, y, z, w: dk.siglip_loss(x, y, z, w),
               lambda x, y, z, w: dk.clip_loss(x, y, 3.5) + dk.siglip_loss(x, y, 2.0, -1.0) + 0 * (z + w)):
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        v, g = _value_and_grads(compiled, [a, b, s, t])
        w, h = _value_and_grads(fn, [a, b, s, t])
        torch.testing.assert_close(v, w, rtol=1e-6, atol=1e-6)
        for x, y in zip(g, h):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_elements", [RT.BLOCK_ELEMENTS, 12])
def test_torch_func_transforms(monkeypatch, block_elements):
    # docs/spec.md §8.5: grad, hessian and jvp of the reference, plain and in blocks (2 rows each)
    monkeypatch.setattr(RT, "BLOCK_ELEMENTS", block_elements)
    a, b = _pair(6, 3, seed=3)
    s, t = torch.tensor(2.5, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    for fn in (lambda x, z, w: dk.clip_loss(x, b, z) + 0 * w, lambda x, z, w: dk.siglip_loss(x, b, z, w)):
        _, want = _value_and_grads(fn, [a, s, t])
        got = torch.func.grad(fn, argnums=(0, 1, 2))(a, s, t)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
        hess = torch.func.hessian(fn, argnums=1)(a, s, t)
        eps = 1e-5  # central difference of the autograd gradient in s
        fd = (_value_and_grads(fn, [a, s + eps, t])[1][1] - _value_and_grads(fn, [a, s - eps, t])[1][1]) / (2 * eps)
        torch.testing.assert_close(hess, fd, rtol=1e-6, atol=1e-9)
        _, tangent = torch.func.jvp(lambda z: fn(a, z, t), (s,), (torch.ones_like(s),))
        torch.testing.assert_close(tangent, want[1], rtol=1e-12, atol=1e-14)


def test_autocast_does_not_reach_inside():
    # docs/spec.md §8.4: float32 inputs under a bf16 autocast compute and return as without it
    a, b = _pair(9, 5, torch.float32)
    s = torch.tensor(SCALE)
    def losses():
        return (dk.clip_loss(a, b, s), dk.siglip_loss(a, b, s, BIAS),
                dk.ClipLoss()(a, b, s), dk.SigLipLoss()(a, b, s, BIAS))

    plain = losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = losses()
    for x, y in zip(auto, plain):
        assert x.dtype == torch.float32 and torch.equal(x, y)


# --------------------------------------------------------------------------------------------
# fp32 and bf16 at CLIP's clamp (s = 100) and SigLIP's initial bias (t = −10): the accuracy rule


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,d", [(64, 32), (67, 19)])
def test_extreme_scale_and_bias_accuracy(dtype, n, d):
    a, b = views(n, d, torch.float64, n + d, "cpu")
    a, b = a.to(dtype), b.to(dtype)
    s = torch.tensor(100.0)            # fp32 parameters, as under AMP
    t = torch.tensor(-10.0)
    _check(dk.clip_loss, O.clip_official, [a, b, s])
    _check(dk.siglip_loss, O.siglip_official, [a, b, s, t])
    # Python floats for the scale and bias
    _check(lambda x, y: dk.clip_loss(x, y, 100.0), lambda x, y: O.clip_official(x, y, 100.0), [a, b])
    _check(lambda x, y: dk.siglip_loss(x, y, 100.0, -10.0), lambda x, y: O.siglip_official(x, y, 100.0, -10.0), [a, b])


def test_extreme_scale_blocked_fp32():
    a, b = views(40, 16, torch.float32, 3, "cpu")
    s, t = torch.tensor(100.0), torch.tensor(-10.0)
    _check(lambda x, y, z: RT.clip(x, y, z, rows=7), O.clip_official, [a, b, s])
    _check(lambda x, y, z, w: RT.siglip(x, y, z, w, rows=7), O.siglip_official, [a, b, s, t])


# --------------------------------------------------------------------------------------------
# bad input (docs/spec.md §6)


def _features(n=4, d=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g).to(dtype), torch.randn(n, d, generator=g).to(dtype)


def _bad_cases():
    a, b = _features()
    one = torch.tensor(1.0)
    return [
        ((a[0], b, 1.0), ValueError, r"image_features must be 2-D.*\(3,\)"),
        ((a, b[None], 1.0), ValueError, r"text_features must be 2-D"),
        ((a, b[:3], 1.0), ValueError, r"same number of rows.*\(4, 3\).*\(3, 3\)"),
        ((a, b[:, :2], 1.0), ValueError, r"same feature dimension.*\(4, 3\).*\(4, 2\)"),
        ((a, b.double(), 1.0), ValueError, r"same dtype.*float32.*float64"),
        ((a.long(), b.long(), 1.0), TypeError, r"image_features must be a floating-point tensor"),
        ((a.numpy(), b, 1.0), TypeError, r"image_features must be a torch.Tensor"),
        ((a[:0], b[:0], 1.0), ValueError, r"image_features needs at least 1 rows"),
        ((a, b, 0.0), ValueError, r"logit_scale must be a finite number > 0, got 0.0"),
        ((a, b, -2), ValueError, r"logit_scale must be a finite number > 0, got -2"),
        ((a, b, float("inf")), ValueError, r"logit_scale must be a finite number > 0, got inf"),
        ((a, b, float("nan")), ValueError, r"logit_scale .* got nan"),
        ((a, b, True), TypeError, r"logit_scale must be a Python float or a one-element tensor, got True"),
        ((a, b, "10"), TypeError, r"logit_scale must be a Python float .* got '10'"),
        ((a, b, None), TypeError, r"logit_scale .* got None"),
        ((a, b, torch.ones(2)), ValueError, r"logit_scale must be a Python float or a tensor with one element.*\(2,\)"),
        ((a, b, torch.ones(0)), ValueError, r"logit_scale .* one element.*\(0,\)"),
        ((a, b, torch.tensor(10)), TypeError, r"logit_scale must be a floating-point tensor.*torch.int64"),
        ((a, b, one.to("meta")), ValueError, r"logit_scale must be on the features' device cpu, got a tensor on meta"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_input_raises(case):
    args, err, pattern = _bad_cases()[case]
    with pytest.raises(err, match=pattern):
        dk.clip_loss(*args)
    with pytest.raises(err, match=pattern):
        dk.siglip_loss(*args, -1.0)


@pytest.mark.parametrize("bias,err,pattern", [
    (float("inf"), ValueError, r"logit_bias must be finite, got inf"),
    (torch.zeros(3), ValueError, r"logit_bias must be a Python float or a tensor with one element.*\(3,\)"),
    (torch.tensor(1, dtype=torch.int32), TypeError, r"logit_bias must be a floating-point tensor"),
    (torch.tensor(0.0, device="meta"), ValueError, r"logit_bias must be on the features' device"),
    ("x", TypeError, r"logit_bias must be a Python float"),
])
def test_bad_bias_raises(bias, err, pattern):
    a, b = _features()
    with pytest.raises(err, match=pattern):
        dk.siglip_loss(a, b, 10.0, bias)
    with pytest.raises(err, match=pattern):
        dk.ClipLoss()(a, b, 10.0, bias)  # checked there too, though CE ignores a constant bias


def test_negative_bias_and_small_scale_are_fine():
    a, b = _features(dtype=torch.float64)
    torch.testing.assert_close(dk.siglip_loss(a, b, 1e-3, -50.0), O.siglip_official(a, b, 1e-3, -50.0),
                               rtol=1e-12, atol=0)


def test_gather_distributed_flag():
    a, b = _features()
    with pytest.raises(TypeError, match="gather_distributed must be a bool, got 1"):
        dk.clip_loss(a, b, 1.0, gather_distributed=1)
    with pytest.raises(TypeError, match="gather_distributed must be a bool"):
        dk.SigLipLoss(gather_distributed="yes")
    # without a process group, gather_distributed=True is one rank
    assert torch.equal(dk.clip_loss(a, b, 3.0, gather_distributed=True), dk.clip_loss(a, b, 3.0))
    assert torch.equal(dk.siglip_loss(a, b, 3.0, -1.0, gather_distributed=True), dk.siglip_loss(a, b, 3.0, -1.0))


# --------------------------------------------------------------------------------------------
# backends


@pytest.mark.parametrize("name", ["cuda"])  # triton: tests/test_two_tower_triton.py
def test_compiled_backends_raise_until_implemented(name):
    a, b = _features()
    with pytest.raises(_backend.BackendUnavailableError, match=f"backend='{name}' does not implement clip_loss"):
        dk.clip_loss(a, b, 10.0, backend=name)
    with pytest.raises(_backend.BackendUnavailableError, match=f"backend='{name}' does not implement siglip_loss"):
        dk.siglip_loss(a, b, 10.0, -10.0, backend=name)
    with pytest.raises(_backend.BackendUnavailableError, match="siglip_loss"):
        dk.SigLipLoss(backend=name)(a, b, 10.0, -10.0)


def test_auto_and_environment_override(monkeypatch):
    a, b = _features()
    assert torch.equal(dk.clip_loss(a, b, 10.0), dk.clip_loss(a, b, 10.0, backend="torch"))
    assert torch.equal(dk.siglip_loss(a, b, 10.0, -1.0, backend="auto"),
                       dk.siglip_loss(a, b, 10.0, -1.0, backend="torch"))
    with pytest.raises(ValueError, match="backend must be one of .* got 'gpu'"):
        dk.clip_loss(a, b, 10.0, backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        dk.ClipLoss(backend="gpu")
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    with pytest.raises(_backend.BackendUnavailableError, match="clip_loss"):
        dk.clip_loss(a, b, 10.0)
    monkeypatch.setenv(_backend.ENV_VAR, "torch")
    assert torch.equal(dk.clip_loss(a, b, 10.0), dk.clip_loss(a, b, 10.0, backend="torch"))


# --------------------------------------------------------------------------------------------
# modules


def test_modules_equal_functions():
    a, b = _pair(7, 5)
    s = torch.tensor(SCALE, dtype=torch.float64)
    t = torch.tensor(BIAS, dtype=torch.float64)
    v, g = _value_and_grads(dk.ClipLoss(), [a, b, s])
    w, h = _value_and_grads(dk.clip_loss, [a, b, s])
    assert torch.equal(v, w) and all(torch.equal(x, y) for x, y in zip(g, h))
    v, g = _value_and_grads(dk.SigLipLoss(), [a, b, s, t])
    w, h = _value_and_grads(dk.siglip_loss, [a, b, s, t])
    assert torch.equal(v, w) and all(torch.equal(x, y) for x, y in zip(g, h))
    # open_clip's call forms: logit_bias (a no-op for the softmax loss) and output_dict
    assert torch.equal(dk.ClipLoss()(a, b, s, t), dk.clip_loss(a, b, s))
    out = dk.ClipLoss()(a, b, s, output_dict=True)
    assert list(out) == ["contrastive_loss"] and torch.equal(out["contrastive_loss"], dk.clip_loss(a, b, s))
    out = dk.SigLipLoss()(image_features=a, text_features=b, logit_scale=s, logit_bias=t, output_dict=True)
    assert torch.equal(out["contrastive_loss"], dk.siglip_loss(a, b, s, t))


def test_module_constructors_are_keyword_only():
    with pytest.raises(TypeError):
        dk.ClipLoss(True)
    with pytest.raises(TypeError):
        dk.SigLipLoss(False, "torch")
    m = dk.SigLipLoss(gather_distributed=True, backend="torch")
    assert m.gather_distributed is True and m.backend == "torch"


def test_example_learns(one_intra_op_thread):
    # examples/two_tower.py: 80 steps of CLIP and of SigLIP lift held-out retrieval far above chance (1/512)
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "two_tower.py"
    spec = importlib.util.spec_from_file_location("two_tower_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for loss in ("clip", "siglip"):
        assert example.main(["--loss", loss, "--steps", "80"]) > 0.3, loss


# --------------------------------------------------------------------------------------------
# gather_distributed=True under real processes (gloo): open_clip's local loss


D_IN, D = 5, 6
N_LOCAL = 3


class _Towers(torch.nn.Module):
    """Two encoders and, when the loss uses them, CLIP's learnable temperature and SigLIP's bias (a
    parameter the loss does not use would leave DDP's reduction incomplete)."""

    def __init__(self, learn_scale: bool, learn_bias: bool):
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Sequential(torch.nn.Linear(D_IN, 7), torch.nn.Tanh(), torch.nn.Linear(7, D))
        self.text = torch.nn.Linear(D_IN + 2, D)
        if learn_scale:
            self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if learn_bias:
            self.logit_bias = torch.nn.Parameter(torch.tensor(-10.0 / 3))
        self.double()

    def forward(self, x_image, x_text):
        s = self.logit_scale.exp() if hasattr(self, "logit_scale") else 7.25
        t = self.logit_bias if hasattr(self, "logit_bias") else -2.5
        return self.image(x_image), self.text(x_text), s, t


def _dist_cases():
    """name -> (fn(a, b, s, t, gather), open_clip's rank loss transcribed (a, b, s, t, rank, world),
    whether the scale and the bias are learned tensors, else the floats 7.25 and −2.5)."""
    def blocked(fn):
        def run(*args):  # one anchor per block: the checkpointed path under DDP
            old, RT.BLOCK_ELEMENTS = RT.BLOCK_ELEMENTS, 1
            try:
                return fn(*args)
            finally:
                RT.BLOCK_ELEMENTS = old
        return run

    clip = lambda a, b, s, t, g: dk.clip_loss(a, b, s, gather_distributed=g)  # noqa: E731
    siglip = lambda a, b, s, t, g: dk.siglip_loss(a, b, s, t, gather_distributed=g)  # noqa: E731
    clip_off = lambda a, b, s, t, r, w: O.clip_local_official(a, b, s, r, w)  # noqa: E731
    sig_off = O.siglip_local_official
    return {
        "clip": (clip, clip_off, True, False),
        "clip-float-scale": (clip, clip_off, False, False),
        "clip-module": (lambda a, b, s, t, g: dk.ClipLoss(gather_distributed=g)(a, b, s), clip_off, True, False),
        "clip-blocked": (blocked(clip), clip_off, True, False),
        "siglip": (siglip, sig_off, True, True),
        "siglip-float": (siglip, sig_off, False, False),
        "siglip-float-scale": (siglip, sig_off, False, True),
        "siglip-module": (lambda a, b, s, t, g: dk.SigLipLoss(gather_distributed=g)(a, b, s, t), sig_off, True, True),
        "siglip-blocked": (blocked(siglip), sig_off, True, True),
    }


def _data(world):
    g = torch.Generator().manual_seed(99 + world)
    x_image = torch.randn(world * N_LOCAL, D_IN, generator=g, dtype=torch.float64)
    x_text = torch.cat([x_image, x_image[:, :2]], 1) + 0.3 * torch.randn(world * N_LOCAL, D_IN + 2, generator=g,
                                                                          dtype=torch.float64)
    return x_image, x_text


def _worker(rank, world, init_file, out_dir):
    init_gloo(rank, world, init_file)
    x_image, x_text = _data(world)
    own = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    results = {}
    for name, (fn, _, learn_scale, learn_bias) in _dist_cases().items():
        model = torch.nn.parallel.DistributedDataParallel(_Towers(learn_scale, learn_bias))
        loss = fn(*model(x_image[own], x_text[own]), True)
        loss.backward()
        results[name] = (loss.detach(), {k: p.grad.clone() for k, p in model.module.named_parameters()})
    save_rank(out_dir, rank, results)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_local_loss_equals_global_batch(world):
    """docs/spec.md §5 on W ranks of DDP-wrapped towers: each rank's loss is open_clip's loss on that
    rank (its rows against every rank's columns), their mean is the global batch's loss, and DDP's
    averaged gradients are the global batch's gradients."""
    ranks = rank_results(_worker, world)
    x_image, x_text = _data(world)
    for name, (fn, official_rank, learn_scale, learn_bias) in _dist_cases().items():
        model = _Towers(learn_scale, learn_bias)
        outs = model(x_image, x_text)
        loss = fn(*outs, False)
        loss.backward()
        # each rank's loss is open_clip's loss on that rank
        for r in range(world):
            want = official_rank(*(o.detach() if torch.is_tensor(o) else o for o in outs), r, world)
            torch.testing.assert_close(ranks[r][name][0], want, rtol=1e-10, atol=1e-12, msg=f"{name}: rank {r}")
        # their mean is the global batch's loss, and DDP's averaged gradients are its gradients
        params = dict(model.named_parameters())
        assert all(list(res[name][1]) == list(params) for res in ranks), name
        assert_matches_global(name, [res[name][0] for res in ranks], [list(res[name][1].values()) for res in ranks],
                              loss, model, atol=1e-12)
        # not vacuous: a learned scale and bias receive gradients
        for k in ("logit_scale", "logit_bias"):
            if k in params:
                assert params[k].grad.abs() > 1e-6, f"{name}: {k}"
