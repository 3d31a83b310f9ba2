"""backend="triton" through the public functions: every function dispatches to its Triton op and
agrees with backend="torch" (values, terms and gradients; float64, so agreement is to rounding).

The kernels' accuracy over dtypes, shapes and modes is in test_gram_backends.py, test_triton_gram.py
and test_triton_lse.py; this file checks the wiring in functional.py (arguments, side, return_terms, dispatch)."""

import pytest
import torch

import duality_kernels as dk
from duality_kernels import _backend
from duality_kernels.ops import registry

ONE = [
    ("covariance", lambda z, be: dk.covariance(z, 0, backend=be)),
    ("normalized_gram", lambda z, be: dk.normalized_gram(z, backend=be)),
    ("sample_contrastive_criterion", lambda z, be: dk.sample_contrastive_criterion(z, side="dimension", backend=be)),
    ("dimension_contrastive_criterion", lambda z, be: dk.dimension_contrastive_criterion(z, side="sample", backend=be)),
    ("duality_terms", lambda z, be: torch.stack(dk.duality_terms(z, backend=be))),
    ("coding_rate_loss", lambda z, be: dk.coding_rate_loss(z, 0.3, side="dimension", backend=be)),
    ("mcr2_loss", lambda z, be: dk.mcr2_loss(z, torch.arange(z.shape[0]) % 3, return_terms=True, backend=be)),
    ("singular_values", lambda z, be: dk.singular_values(z, side="sample", backend=be)),
    ("rankme", lambda z, be: dk.rankme(z, 1e-3, backend=be)),
]
TWO = [
    ("cross_correlation", lambda a, b, be: dk.cross_correlation(a, b, 1e-3, backend=be)),
    ("normalized_gram", lambda a, b, be: dk.normalized_gram(a, b, backend=be)),
    ("vicreg_loss", lambda a, b, be: dk.vicreg_loss(a, b, 2.0, 3.0, 4.0, 1.5, 1e-3, side="dimension",
                                                    return_terms=True, backend=be)),
    ("barlow_twins_loss", lambda a, b, be: dk.barlow_twins_loss(a, b, 0.2, 1e-3, side="sample",
                                                                return_terms=True, backend=be)),
    ("spectral_contrastive_loss", lambda a, b, be: dk.spectral_contrastive_loss(a, b, 9.0, return_terms=True,
                                                                                backend=be)),
    ("vicreg_exp_loss", lambda a, b, be: dk.vicreg_exp_loss(a, b, 2.0, 3.0, 4.0, 1.5, 1e-3, 0.3,
                                                            return_terms=True, backend=be)),
    ("vicreg_ctr_loss", lambda a, b, be: dk.vicreg_ctr_loss(a, b, 2.0, 3.0, 4.0, 1.5, 1e-3, 0.3,
                                                            return_terms=True, backend=be)),
    ("ntxent_loss", lambda a, b, be: dk.ntxent_loss(a, b, 0.4, "abs", "dim_std", "sum", backend=be)),
    ("dcl_loss", lambda a, b, be: dk.dcl_loss(a, b, 0.4, "square", "none", backend=be)),
    ("infonce_loss", lambda a, b, be: dk.infonce_loss(a, b, 0.4, "none", backend=be)),
    ("moco_loss", lambda a, b, be: dk.moco_loss(a, b, b.detach().flip(0), 0.3, backend=be)),
    ("hard_negative_ntxent_loss", lambda a, b, be: dk.hard_negative_ntxent_loss(a, b, 0.4, 0.1, 0.5, backend=be)),
    ("supcon_loss", lambda a, b, be: dk.supcon_loss(torch.stack([a, b], 1), torch.arange(a.shape[0]) % 3, 0.3,
                                                    return_terms=True, backend=be)),
    ("clip_loss", lambda a, b, be: dk.clip_loss(a, b, 14.3, backend=be)),
    ("siglip_loss", lambda a, b, be: dk.siglip_loss(a, b, 10.0, -10.0, backend=be)),
]


def _flat(out):
    if isinstance(out, tuple):  # (loss, terms)
        return [out[0], *out[1].values()]
    return [out]


def _compare(fn, inputs):
    results = []
    for be in ("triton", "torch"):
        xs = [x.clone().requires_grad_() for x in inputs]
        outs = _flat(fn(*xs, be))
        total = sum((o * (i + 1)).sum() for i, o in enumerate(outs))
        results.append((outs, torch.autograd.grad(total, xs)))
    (o_t, g_t), (o_r, g_r) = results
    for a, b in zip(o_t + list(g_t), o_r + list(g_r)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_every_function_is_implemented():
    assert set(registry.implemented("triton")) == {name for name, _ in ONE + TWO}


@pytest.mark.parametrize("name,fn", ONE, ids=[n for n, _ in ONE])
def test_one_input(name, fn):
    gen = torch.Generator().manual_seed(9004)
    _compare(fn, [torch.randn(11, 19, dtype=torch.float64, generator=gen)])


@pytest.mark.parametrize("name,fn", TWO, ids=[n for n, _ in TWO])
def test_two_inputs(name, fn):
    g = torch.Generator().manual_seed(3)
    _compare(fn, [torch.randn(13, 9, generator=g, dtype=torch.float64) for _ in range(2)])


def test_ops_without_a_gathered_form_refuse_a_process_group():
    """Inside a group, the compiled ops with no docs/spec.md §5 form raise instead of computing one process's
    batch; VICReg, Barlow Twins, the spectral loss (both backends) and VICReg-ctr (Triton) have one
    (ops/gathered.py, tests/test_distributed_compiled.py)."""
    class TwoRanks:
        active, world, rank = True, 2, 0

    from duality_kernels import functional as F

    with pytest.raises(dk.BackendUnavailableError, match=r"'triton'.*vicreg_exp_loss with gather_distributed=True"):
        F._triton("vicreg_exp_loss", TwoRanks())
    for op in ("vicreg_loss", "barlow_twins_loss", "spectral_contrastive_loss", "vicreg_ctr_loss"):
        _backend.require_single_process("triton", op, TwoRanks())
    for op in ("vicreg_loss", "barlow_twins_loss", "spectral_contrastive_loss"):
        _backend.require_single_process("cuda", op, TwoRanks())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter warns on NaN
@pytest.mark.parametrize("name,fn", TWO, ids=[n for n, _ in TWO])
def test_nan_and_inf_propagate_like_the_reference(name, fn):
    """docs/spec.md §6: NaN or Inf in the input propagates as in the reference; no kernel crashes."""
    gen = torch.Generator().manual_seed(6784)
    z1, z2 = (torch.randn(9, 13, dtype=torch.float64, generator=gen),
              torch.randn(9, 13, dtype=torch.float64, generator=gen))
    z1[2, 3] = float("nan")
    z2[0, 0] = float("inf")
    for a, b in zip(_flat(fn(z1, z2, "triton")), _flat(fn(z1, z2, "torch"))):
        assert torch.equal(torch.isnan(a), torch.isnan(b)), name


def test_eager_path_matches_the_custom_ops():
    """Eager calls run the Triton ops as a torch.autograd.Function over the ops' own
    implementations (ops/_direct.py); the registered custom ops must give the same bits."""
    from duality_kernels.ops.triton import gram, lse

    from .accuracy import _check_same_bits

    ops = torch.ops.duality_kernels
    device = "cpu" if not torch.cuda.is_available() else "cuda"
    gen = torch.Generator(device=device).manual_seed(2152)
    z1, z2 = (torch.randn(10, 7, dtype=torch.float64, device=device, generator=gen) for _ in range(2))
    cases = [
        (lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")[0],
         lambda a, b: ops.vicreg_fwd(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")[0]),
        (lambda a, b: gram.covariance(a, 1), lambda a, b: ops.covariance_fwd(a, 1)[0]),
        (lambda a, b: lse.ntxent_terms(a, b, 0.5, "dot", "l2"),
         lambda a, b: ops.ntxent_fwd(a, b, 0.5, "dot", "l2", "none")[0]),
        (lambda a, b: lse.infonce_terms(a, b, 0.5), lambda a, b: ops.infonce_fwd(a, b, 0.5, "none")[0]),
    ]
    _check_same_bits(cases, z1, z2)


def test_autograd_function_subclasses():
    """docs/design.md convention 2 for the Triton Gram ops: VICRegFunction.apply & co. give the same bits
    as the module functions."""
    from duality_kernels.ops.triton import gram

    from .accuracy import _check_same_bits

    device = "cpu" if not torch.cuda.is_available() else "cuda"
    gen = torch.Generator(device=device).manual_seed(6698)
    z1, z2 = (torch.randn(10, 7, dtype=torch.float64, device=device, generator=gen) for _ in range(2))
    _check_same_bits([
        (lambda a, b: gram.VICRegFunction.apply(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")[0],
         lambda a, b: gram.vicreg(a, b, 25.0, 25.0, 1.0, 1.0, 1e-4, "sample")[0]),
        (lambda a, b: gram.CrossCorrelationFunction.apply(a, b, 1e-5)[0], lambda a, b: gram.cross_correlation(a, b)),
        (lambda a, b: gram.DualityTermsFunction.apply(a, "sample")[1], lambda a, b: gram.duality_terms(a, "sample")[1]),
    ], z1, z2)
