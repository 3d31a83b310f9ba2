"""The compiled extension duality_kernels._C and the torch.library layer over it (duality_kernels/ops/cuda.py).

These run on any machine (no GPU needed): the extension was built and imports when torch is a CUDA
build, a missing _C never breaks import (the fakes still work), and the registration machinery
(schemas, fakes, autograd wiring, tracing) passes opcheck with a pure-torch stand-in for _C on CPU.
The kernels themselves are tested against float64 truth in tests/test_gram_backends.py and
tests/test_cuda_gram.py.
"""

import subprocess
import sys
import textwrap

import pytest
import torch

import duality_kernels.ops.cuda as cuda_ops
import duality_kernels.ops._cuda_ext as cuda_ext


@pytest.mark.skipif(
    torch.version.cuda is None,
    reason=f"torch {torch.__version__} is a CPU build: the CUDA extension is not built with it",
)
def test_extension_is_built_and_imports():
    assert cuda_ops.is_available(), (
        "torch is a CUDA build but duality_kernels._C is unavailable: " + cuda_ops.unavailable_reason()
    )
    assert cuda_ops.unavailable_reason() == ""
    import duality_kernels._C as C

    assert callable(C.covariance_fwd) and callable(C.covariance_bwd)
    # The bindings validate before touching the GPU, so this runs on a CPU-only machine too.
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        C.covariance_fwd(torch.zeros(3, 4), 1)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        C.covariance_bwd(torch.zeros(3, 4), torch.zeros(4, 4), 1)


def test_missing_extension_never_breaks_import():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["duality_kernels._C"] = None  # as if the extension were not built
        import torch
        import duality_kernels
        import duality_kernels.ops.cuda as c
        assert not c.is_available()
        reason = c.unavailable_reason()
        assert "pip install --no-build-isolation -e ." in reason, reason
        assert "DUALITY_KERNELS_BUILD_CUDA=1" in reason, reason
        # fakes still work: shapes propagate without the extension
        cov, x = torch.ops.duality_kernels.cuda_covariance_fwd(torch.empty(5, 7, device="meta"), 1)
        assert cov.shape == (7, 7) and x.shape == (5, 7)
        try:
            c.covariance(torch.zeros(3, 4))
        except RuntimeError as e:
            assert "pip install --no-build-isolation -e ." in str(e), str(e)
        else:
            raise AssertionError("the real op ran without the extension")
        print("OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


class _TorchStandIn:
    """covariance's two _C entry points written in torch (docs/spec.md §1), on CPU tensors: lets
    the torch.library layer be tested without the compiled code."""

    @staticmethod
    def covariance_fwd(z, correction):
        x = z - z.mean(0)
        return [x.t() @ x / (z.shape[0] - correction), x.contiguous()]

    @staticmethod
    def covariance_bwd(x, grad, correction):
        return (x @ (grad + grad.t()) / (x.shape[0] - correction)).contiguous()


def test_op_registration_with_stand_in(monkeypatch):
    """The registry's custom ops, fakes and autograd over a stand-in extension: opcheck of both
    ops, gradients against float64 autograd of the formula, and a fullgraph trace."""
    monkeypatch.setattr(cuda_ext, "_C", _TorchStandIn())
    monkeypatch.setattr(cuda_ext, "_SIM", _TorchStandIn())
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(11, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    fwd, bwd = torch.ops.duality_kernels.cuda_covariance_fwd, torch.ops.duality_kernels.cuda_covariance_bwd
    torch.library.opcheck(fwd.default, (z, 1))
    _, x = fwd(z.detach(), 1)
    torch.library.opcheck(bwd.default, (x, torch.randn(6, 6, dtype=torch.float64, generator=gen), 1))
    torch.autograd.gradcheck(lambda t: fwd(t, 1)[0], (z,))
    torch.autograd.gradcheck(lambda t: cuda_ops.CovarianceFunction.apply(t, 0)[0], (z,))

    def loss(t):
        return cuda_ops.CovarianceFunction.apply(t, 1)[0].square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    (g_compiled,) = torch.autograd.grad(compiled(z), z)
    (g_eager,) = torch.autograd.grad(torch.cov(z.t()).square().sum(), z)
    torch.testing.assert_close(g_compiled, g_eager)
