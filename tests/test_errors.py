"""docs/spec.md §6: every error, raised before any kernel runs, naming the argument and its value;
and the backend selection rules (_backend.py)."""

import math

import pytest
import torch

import duality_kernels as dk
from duality_kernels import _backend

PAIR_LOSSES = {
    "vicreg_loss": dk.vicreg_loss,
    "vicreg_exp_loss": dk.vicreg_exp_loss,
    "vicreg_ctr_loss": dk.vicreg_ctr_loss,
    "barlow_twins_loss": dk.barlow_twins_loss,
    "ntxent_loss": dk.ntxent_loss,
    "dcl_loss": dk.dcl_loss,
    "infonce_loss": dk.infonce_loss,
    "spectral_contrastive_loss": dk.spectral_contrastive_loss,
    "cross_correlation": dk.cross_correlation,
    "normalized_gram": dk.normalized_gram,
}
SINGLE = {
    "covariance": dk.covariance,
    "sample_contrastive_criterion": dk.sample_contrastive_criterion,
    "dimension_contrastive_criterion": dk.dimension_contrastive_criterion,
    "duality_terms": dk.duality_terms,
    "normalized_gram": dk.normalized_gram,
}
TEMPERATURE = ["vicreg_exp_loss", "vicreg_ctr_loss", "ntxent_loss", "dcl_loss", "infonce_loss"]
SIDED = ["vicreg_loss", "barlow_twins_loss", "spectral_contrastive_loss"]
GATHER = ["vicreg_loss", "vicreg_exp_loss", "vicreg_ctr_loss", "barlow_twins_loss", "ntxent_loss",
          "dcl_loss", "infonce_loss", "spectral_contrastive_loss"]


def z(n=4, d=3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(8866)
    return torch.randn(n, d, generator=gen).to(dtype)


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_non_2d_raises(name, shape):
    gen = torch.Generator().manual_seed(9932)
    bad = torch.randn(shape, generator=gen)
    pattern = str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=r"z1 must be 2-D.*" + pattern):
        PAIR_LOSSES[name](bad, bad)


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_non_2d_single_raises(name):
    with pytest.raises(ValueError, match=r"must be 2-D"):
        gen = torch.Generator().manual_seed(8289)
        SINGLE[name](torch.randn(3, 4, 5, generator=gen))


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_mismatches_raise(name):
    fn = PAIR_LOSSES[name]
    with pytest.raises(ValueError, match=r"same shape.*\(4, 3\).*\(5, 3\)"):
        fn(z(4, 3), z(5, 3))
    with pytest.raises(ValueError, match=r"same dtype.*float32.*float64"):
        fn(z(), z(dtype=torch.float64))
    with pytest.raises(ValueError, match=r"same device.*cpu.*meta"):
        fn(z(), torch.empty(4, 3, device="meta"))


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_and_bool_inputs_raise_typeerror(name, dtype):
    bad = torch.ones(4, 3, dtype=dtype)
    with pytest.raises(TypeError, match=r"z1 must be a floating-point tensor.*" + str(dtype).split(".")[1]):
        PAIR_LOSSES[name](bad, bad)


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_integer_single_raises_typeerror(name):
    with pytest.raises(TypeError, match=r"floating-point"):
        SINGLE[name](torch.ones(4, 3, dtype=torch.int64))


def test_non_tensor_raises_typeerror():
    with pytest.raises(TypeError, match=r"z1 must be a torch.Tensor, got list"):
        dk.vicreg_loss([[1.0, 2.0]], [[1.0, 2.0]])


@pytest.mark.parametrize("name", ["vicreg_loss", "vicreg_exp_loss", "vicreg_ctr_loss", "barlow_twins_loss",
                                  "dcl_loss", "spectral_contrastive_loss", "cross_correlation"])
def test_one_row_raises(name):
    with pytest.raises(ValueError, match=r"at least 2 rows.*N=1"):
        PAIR_LOSSES[name](z(1, 5), z(1, 5))


def test_covariance_rows_vs_correction():
    with pytest.raises(ValueError, match=r"correction=1.*N=1"):
        dk.covariance(z(1, 4))
    assert dk.covariance(z(1, 4), correction=0).shape == (4, 4)
    with pytest.raises(ValueError, match=r"correction must be >= 0, got -1"):
        dk.covariance(z(), correction=-1)
    with pytest.raises(TypeError, match=r"correction must be an int, got 1.5"):
        dk.covariance(z(), correction=1.5)


@pytest.mark.parametrize("name", ["vicreg_ctr_loss", "vicreg_exp_loss"])
def test_one_column_raises(name):
    with pytest.raises(ValueError, match=r"at least 2 columns.*D=1"):
        PAIR_LOSSES[name](z(5, 1), z(5, 1))


@pytest.mark.parametrize("name", TEMPERATURE)
@pytest.mark.parametrize("t", [0.0, -0.5, math.inf, math.nan])
def test_bad_temperature(name, t):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0, got " + repr(t).replace("(", "")):
        PAIR_LOSSES[name](z(), z(), temperature=t)


@pytest.mark.parametrize("name", TEMPERATURE)
def test_non_number_temperature_typeerror(name):
    with pytest.raises(TypeError, match=r"temperature must be a real number"):
        PAIR_LOSSES[name](z(), z(), temperature="0.1")
    with pytest.raises(TypeError, match=r"temperature must be a real number"):
        PAIR_LOSSES[name](z(), z(), temperature=True)


@pytest.mark.parametrize("mu", [0.0, -1.0, math.inf, math.nan])
def test_bad_mu(mu):
    with pytest.raises(ValueError, match=r"mu must be a finite number > 0"):
        dk.spectral_contrastive_loss(z(), z(), mu=mu)


@pytest.mark.parametrize("fn,kw,arg", [
    (dk.ntxent_loss, {"similarity": "cosine"}, "similarity"),
    (dk.dcl_loss, {"similarity": "Dot"}, "similarity"),
    (dk.ntxent_loss, {"normalization": "batchnorm"}, "normalization"),
    (dk.ntxent_loss, {"reduction": "avg"}, "reduction"),
    (dk.dcl_loss, {"reduction": None}, "reduction"),
    (dk.infonce_loss, {"reduction": "max"}, "reduction"),
    (dk.vicreg_loss, {"side": "samples"}, "side"),
    (dk.barlow_twins_loss, {"side": "dim"}, "side"),
    (dk.spectral_contrastive_loss, {"side": ""}, "side"),
    (dk.vicreg_loss, {"backend": "cudnn"}, "backend"),
    (dk.ntxent_loss, {"backend": "Triton"}, "backend"),
])
def test_unknown_names(fn, kw, arg):
    value = next(iter(kw.values()))
    with pytest.raises(ValueError, match=rf"{arg} must be one of .*got {value!r}".replace("(", r"\(").replace(")",
                                                                                                              r"\)")):
        fn(z(), z(), **kw)


@pytest.mark.parametrize("name", ["sample_contrastive_criterion", "dimension_contrastive_criterion", "duality_terms"])
def test_unknown_side_single(name):
    with pytest.raises(ValueError, match=r"side must be one of"):
        SINGLE[name](z(), side="both")


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_unknown_backend_every_function(name):
    with pytest.raises(ValueError, match=r"backend must be one of"):
        PAIR_LOSSES[name](z(), z(), backend="jax")


@pytest.mark.parametrize("name", GATHER)
def test_gather_without_distributed_support(name, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"gather_distributed=True needs torch.distributed"):
        PAIR_LOSSES[name](z(), z(), gather_distributed=True)


def test_weights_validated():
    with pytest.raises(ValueError, match=r"inv_weight must be finite, got nan"):
        dk.vicreg_loss(z(), z(), inv_weight=math.nan)
    with pytest.raises(TypeError, match=r"cov_weight must be a real number"):
        dk.vicreg_loss(z(), z(), cov_weight=None)
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0, got -1"):
        dk.barlow_twins_loss(z(), z(), eps=-1)
    with pytest.raises(TypeError, match=r"return_terms must be a bool"):
        dk.vicreg_loss(z(), z(), return_terms="yes")


def test_module_constructors_validate():
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        dk.NTXentLoss(temperature=0)
    with pytest.raises(ValueError, match=r"memory_bank_size must be 0"):
        dk.NTXentLoss(memory_bank_size=4096)
    with pytest.raises(TypeError, match=r"weight_fn must be None or a callable"):
        dk.DCLLoss(weight_fn=1.0)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        dk.VICRegLoss(backend="gpu")
    with pytest.raises(ValueError, match=r"side must be one of"):
        dk.BarlowTwinsLoss(side="x")


# ------------------------------------------------------------------------------------------
# backend selection


def test_env_override_of_auto(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "torch")
    assert _backend.resolve("auto", "vicreg_loss", z()) == "torch"
    monkeypatch.setenv(_backend.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=r"environment variable DUALITY_KERNELS_BACKEND must be one of.*'bogus'"):
        dk.vicreg_loss(z(), z())
    # an explicit argument wins over the environment
    assert torch.isfinite(dk.vicreg_loss(z(), z(), backend="torch"))
    # "triton" from the environment reaches the Triton path: CPU tensors outside the interpreter
    monkeypatch.setenv(_backend.ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors, got tensors on cpu"):
        dk.ntxent_loss(z(), z())


def test_auto_on_cpu_is_torch(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    for op in ("vicreg_loss", "ntxent_loss", "covariance"):
        assert _backend.resolve("auto", op, z()) == "torch"


def test_triton_rules_are_clear(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors, got tensors on cpu"):
        dk.dcl_loss(z(), z(), backend="triton")

    class TwoRanks:  # what distributed.context returns inside an initialized group of 2
        active, world = True, 2

    # VICReg-exp has no Triton form of docs/spec.md §5; NT-Xent has one (lse.py), torch has every one
    with pytest.raises(dk.BackendUnavailableError, match=r"triton.*vicreg_exp_loss.*gather_distributed=True.*2 proc"):
        _backend.require_single_process("triton", "vicreg_exp_loss", TwoRanks())
    _backend.require_single_process("triton", "ntxent_loss", TwoRanks())
    _backend.require_single_process("torch", "vicreg_exp_loss", TwoRanks())


def test_cuda_backend_on_cpu_tensors_or_unsupported_op():
    with pytest.raises(dk.BackendUnavailableError, match=r"backend='cuda' does not implement ntxent_loss"):
        dk.ntxent_loss(z(), z(), backend="cuda")
    from duality_kernels.ops import cuda as cuda_ops

    if cuda_ops.is_available():
        with pytest.raises(ValueError, match=r"backend='cuda' needs CUDA tensors, got tensors on cpu"):
            dk.vicreg_loss(z(), z(), backend="cuda")
    else:
        with pytest.raises(dk.BackendUnavailableError, match=r"pip install --no-build-isolation"):
            dk.vicreg_loss(z(), z(), backend="cuda")
