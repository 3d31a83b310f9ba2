"""The local pieces of gather_distributed=True on the compiled backends (ops/gathered.py), in one
process: ``moments`` and ``spectral_rows`` of ops/cuda.py and ops/triton/gram.py against torch
formulas (docs/design.md convention 5), their custom ops (opcheck, fakes, the eager path's bits, argument
checks), and the gathered forms at W = 1 (a context of one rank skips the collectives, so the
merge algebra must give the single-process loss) including torch.compile(fullgraph=True).

Without a GPU the CUDA backend runs in its CPU simulator (duality_kernels/testing/csim.py) and the Triton kernels
under the interpreter, on CPU tensors; tests/test_distributed_compiled.py runs the same forms
across gloo processes.
"""

import pytest
import torch

from duality_kernels import distributed as dist_ctx
from duality_kernels import reference as ref
from duality_kernels.ops import cuda as cuda_ops
from duality_kernels.ops import gathered

from duality_kernels.testing import csim
from .accuracy import _check, _check_compiled, _check_low_precision, _check_same_bits, _flat, _spectral_mu, views

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["fp32", "fp64"]
# N = 2; primes; 31/33 straddle 32-wide tiles; 130 rows give the column passes several row chunks;
# N > D and N < D
SHAPES = [(2, 5), (7, 3), (31, 17), (17, 33), (130, 9)]
SHAPE_IDS = [f"{n}x{d}" for n, d in SHAPES]

_simulator = csim.module_fixture()
# On a GPU every test here is a GPU test (benchmarks/gpu_check.sh runs `pytest -m cuda`).
pytestmark = [pytest.mark.cuda] if ON_GPU else []


def _backends():
    from duality_kernels.ops.triton import _common

    out = [] if ON_GPU and not cuda_ops.is_available() else ["cuda"]  # CPU: the simulator
    if _common.is_available() and (ON_GPU or _common.interpreting()):
        out.append("triton")
    return out


BACKENDS = _backends()


def _ops(backend):
    if backend == "cuda":
        return cuda_ops
    from duality_kernels.ops.triton import gram

    return gram


def _prefix(backend):
    return "cuda_" if backend == "cuda" else ""


def _moments_truth(mode):
    """moments' results from their definitions (torch, in the inputs' dtype)."""
    def fn(a, b):
        xs = [a - a.mean(dim=0), b - b.mean(dim=0)]
        out = [((a - b) ** 2).mean(), torch.stack([a.mean(dim=0), b.mean(dim=0)]),
               torch.stack([(x * x).sum(dim=0) for x in xs])]
        if mode == 1:
            out.append(torch.stack([x.T @ x for x in xs]))
        elif mode == 2:
            out.append((xs[0].T @ xs[1])[None])
        return out
    return fn


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_moments_and_spectral_rows_match_their_definitions(backend, dtype, shape):
    ops = _ops(backend)
    z1, z2 = views(*shape, dtype, 21, DEVICE)
    acc = _acc(dtype)
    for mode in (0, 1, 2):
        out = ops.moments(z1, z2, mode)
        assert [o.dtype for o in out] == [acc, torch.float64, torch.float64, acc], (mode, [o.dtype for o in out])
        assert out[3].shape == ((0, 2, 1)[mode],) + (shape[1],) * 2
        # the float64 moments compared in the accuracy rule's dtype (eager computes them there)
        kernel = lambda a, b, m=mode: [o.to(acc) for o in ops.moments(a, b, m)[:3 if m == 0 else 4]]  # noqa: E731
        _check(kernel, _moments_truth(mode), [z1, z2])
    mu = _spectral_mu(z1)  # about half the rows clamped
    _check(lambda a, b: ops.spectral_rows(a, b, mu),
           lambda a, b: (torch.stack([ref.clamp_row_norms(a, mu), ref.clamp_row_norms(b, mu)]),
                         (ref.clamp_row_norms(a, mu) * ref.clamp_row_norms(b, mu)).sum(dim=1)), [z1, z2])


def _op_cases(backend, n, d, dtype):
    """(op name, args) of the four custom ops, the backward ops fed from a real forward."""
    ops = torch.ops.duality_kernels
    p = _prefix(backend)
    z1, z2 = views(n, d, dtype, 22, DEVICE)
    r1, r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    acc = _acc(dtype)
    g = torch.tensor(0.75, dtype=acc, device=DEVICE)
    gv = torch.linspace(-1, 1, 2 * d, dtype=torch.float64, device=DEVICE).reshape(2, d)
    cases = []
    for mode in (0, 1, 2):
        cases.append((f"{p}moments_fwd", (r1, r2, mode)))
        out = getattr(ops, f"{p}moments_fwd")(z1, z2, mode)
        gg = torch.linspace(-1, 1, out[3].numel(), dtype=acc, device=DEVICE).reshape(out[3].shape)
        cases.append((f"{p}moments_bwd", (z1, z2, out[4], out[1], g, gv, gv.flip(1), gg if mode else None, mode)))
    cases.append((f"{p}spectral_rows_fwd", (r1, r2, 0.5)))
    x, pr, q = getattr(ops, f"{p}spectral_rows_fwd")(z1, z2, 0.5)
    gx = torch.linspace(-1, 1, x.numel(), dtype=acc, device=DEVICE).reshape(x.shape)
    cases.append((f"{p}spectral_rows_bwd", (z1, z2, x, q, gx, pr.flip(0), 0.5)))
    cases.append((f"{p}spectral_rows_bwd", (z1, z2, x, q, None, pr, 0.5)))
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_fakes(backend):
    for name, args in _op_cases(backend, 5, 3, torch.float32):
        op = getattr(torch.ops.duality_kernels, name).default
        torch.library.opcheck(op, args)
        real = op(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
        meta = op(*[a.detach().to("meta") if isinstance(a, torch.Tensor) else a for a in args])
        assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in meta], name


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_path_matches_the_custom_ops(backend):
    """Eager calls run the ops' implementations under ops/_direct.py; the custom ops, the same bits."""
    ops, p = _ops(backend), _prefix(backend)
    tops = torch.ops.duality_kernels
    z1, z2 = views(9, 6, torch.float64, 23, DEVICE)
    cases = []
    for mode in (1, 2):
        cases.append((lambda a, b, m=mode: ops.moments(a, b, m)[3],
                      lambda a, b, m=mode: getattr(tops, f"{p}moments_fwd")(a, b, m)[3]))
        cases.append((lambda a, b, m=mode: ops.moments(a, b, m)[2] + ops.moments(a, b, m)[0],
                      lambda a, b, m=mode: getattr(tops, f"{p}moments_fwd")(a, b, m)[2]
                      + getattr(tops, f"{p}moments_fwd")(a, b, m)[0]))
    cases.append((lambda a, b: ops.spectral_rows(a, b, 0.5)[0],
                  lambda a, b: getattr(tops, f"{p}spectral_rows_fwd")(a, b, 0.5)[0]))
    cases.append((lambda a, b: ops.spectral_rows(a, b, 0.5)[1],
                  lambda a, b: getattr(tops, f"{p}spectral_rows_fwd")(a, b, 0.5)[1]))
    _check_same_bits(cases, z1, z2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ops_check_their_arguments(backend):
    """The forward custom ops raise the public functions' kind of errors (ValueError/TypeError
    naming the argument and its value) before any kernel runs (the ops' contracts)."""
    tops = torch.ops.duality_kernels
    p = _prefix(backend)
    moments, rows = getattr(tops, f"{p}moments_fwd"), getattr(tops, f"{p}spectral_rows_fwd")
    z1, z2 = views(6, 4, torch.float32, 24, DEVICE)
    bad = [
        (lambda: moments(z1, z2, 3), ValueError, r"mode must be one of 0, 1, 2; got 3"),
        (lambda: moments(z1, z2[:5], 1), ValueError, r"z1 and z2 must have the same shape"),
        (lambda: moments(z1, z2.double(), 1), ValueError, r"z1 and z2 must have the same dtype"),
        (lambda: moments(z1[:, 0], z2[:, 0], 1), ValueError, r"z1 must be 2-D.*got shape \(6,\)"),
        (lambda: moments(z1.int(), z2.int(), 1), TypeError, r"z1"),
        (lambda: rows(z1, z2, 0.0), ValueError, r"mu must be .*0\.0"),
        (lambda: rows(z1, z2, float("nan")), ValueError, r"mu"),
        (lambda: rows(z1, z2[:, :3], 1.0), ValueError, r"z1 and z2 must have the same shape"),
    ]
    for call, kind, pattern in bad:
        with pytest.raises(kind, match=pattern):
            call()


# ------------------------------------------------------------------------------------------------
# the gathered forms with one rank: no collective runs, so the merges (Chan's δ = 0) and the
# rank-local algebra must reproduce the single-process loss and its gradients


def _gathered_cases(backend, side, one=dist_ctx.LOCAL):
    ops = _ops(backend)
    w = (2.0, 3.0, 5.0, 1.5, 1e-4)
    cases = []
    for strat in ("gather", "allreduce"):
        cases.append((f"vicreg-{strat}", lambda a, b, s=strat: gathered.vicreg(ops, one, s, a, b, *w, side),
                      lambda a, b: ref.vicreg(a, b, *w, side)))
        cases.append((f"barlow-{strat}", lambda a, b, s=strat: gathered.barlow_twins(ops, one, s, a, b, 0.3, 1e-5,
                                                                                     side),
                      lambda a, b: ref.barlow_twins(a, b, 0.3, 1e-5, side)))
    cases.append(("spectral", lambda a, b: gathered.spectral(ops, one, a, b, 0.5, side),
                  lambda a, b: ref.spectral(a, b, 0.5, side)))
    if backend == "triton":
        cases.append(("vicreg_ctr", lambda a, b: gathered.vicreg_ctr_triton(one, a, b, *w, 0.5),
                      lambda a, b: ref.vicreg_ctr(a, b, *w, 0.5)))
    return cases


@pytest.mark.parametrize("shape", [(2, 5), (17, 33), (31, 17)], ids=["2x5", "17x33", "31x17"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("side", ["sample", "dimension"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gathered_forms_with_one_rank_match_the_reference(backend, side, dtype, shape):
    z1, z2 = views(*shape, dtype, 25, DEVICE)
    for name, fn, reference in _gathered_cases(backend, side):
        try:
            _check(fn, reference, [z1, z2])
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


_HALF = [(be, dt, amp) for be in BACKENDS for dt in (torch.bfloat16, torch.float16) for amp in (None, 300.0)
         # bf16 is broken in the Triton interpreter (docs/design.md convention 10); fp16 runs there
         if dt == torch.float16 or amp is None and (ON_GPU or be == "cuda")]


@pytest.mark.parametrize("backend,dtype,amplitude", _HALF,
                         ids=[f"{b}-{str(d)[6:]}{'-x300' if a else ''}" for b, d, a in _HALF])
def test_gathered_forms_reduced_precision(backend, dtype, amplitude):
    """bf16/fp16 (no eager oracle: the reference computes in fp32): every loss, term and gradient
    within 2% of the float64 truth on the same rounded inputs, terms in float32 (docs/spec.md). Values
    x300 put the Grams (and the backward's Gram operands) past fp16's range (65504)."""
    for shape in ((33, 48),) if amplitude is None else ((70, 20),):  # N < D, N > D
        z1, z2 = views(*shape, torch.float64, 27, DEVICE)
        if amplitude is not None:
            s = amplitude / max(z1.abs().max().item(), z2.abs().max().item())
            z1, z2 = z1 * s, z2 * s
        z1, z2 = z1.to(dtype), z2.to(dtype)
        for side in ("sample", "dimension"):
            for name, fn, reference in _gathered_cases(backend, side):
                try:
                    _check_low_precision(fn, reference, [z1, z2], rtol=2e-2)
                    assert all(o.dtype == torch.float32 for o in _flat(fn(z1, z2))), "not float32"
                except AssertionError as exc:
                    raise AssertionError(f"{name} {shape} {side}: {exc}") from exc


@pytest.mark.parametrize("backend", BACKENDS)
def test_gathered_forms_compile_fullgraph(backend):
    """torch.compile(fullgraph=True) of the rank-local part of the gathered forms (the custom ops,
    the merges and the D×D algebra; no collective runs with one rank): no graph break."""
    ops = _ops(backend)
    one = dist_ctx.LOCAL
    z1, z2 = views(9, 6, torch.float32, 26, DEVICE)

    def loss_fn(a, b):
        v = gathered.vicreg(ops, one, "allreduce", a, b, 2.0, 3.0, 5.0, 1.5, 1e-4, "dimension")[0]
        bt = gathered.barlow_twins(ops, one, "allreduce", a, b, 0.3, 1e-5, "dimension")[0]
        return v + bt + gathered.spectral(ops, one, a, b, 0.5, "dimension")[0]

    _check_compiled(loss_fn, z1, z2, "aot_eager")


class _ActiveOneRank(dist_ctx.Context):
    """World size 1 with the collectives run for real (Context skips them when W = 1)."""

    @property
    def active(self):
        return True


def test_one_rank_group_runs_the_collectives(tmp_path):
    """The gathered forms through real collectives (all-gather, its reduce-scatter or all-reduce
    backward) in a process group of one rank, nccl on a GPU (its smoke test), gloo here: the
    single-process loss and gradients."""
    import torch.distributed as dist

    dist.init_process_group("nccl" if ON_GPU else "gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        z1, z2 = views(12, 7, torch.float32, 28, DEVICE)
        for backend in BACKENDS:
            for side in ("sample", "dimension"):
                for name, fn, reference in _gathered_cases(backend, side, _ActiveOneRank(0, 1)):
                    try:
                        _check(fn, reference, [z1, z2])
                    except AssertionError as exc:
                        raise AssertionError(f"{backend} {name} {side}: {exc}") from exc
    finally:
        dist.destroy_process_group()
