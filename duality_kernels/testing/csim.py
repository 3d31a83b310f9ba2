"""Build and enable the CPU simulator of the CUDA extension (csrc/sim/cuda_sim.h) for the tests.

The simulator is csrc/bindings/ plus the kernel files compiled with g++ and -DDK_HOST_SIM: the
same binding code and the same kernel source, run on CPU tensors (every CUDA thread a fiber,
blocks one after another; GEMMs through ATen on the CPU). Enabled, ``backend="cuda"`` and the ops
of ``duality_kernels.ops.cuda`` accept CPU tensors and run there, so the test suite checks the
CUDA backend's arithmetic, indexing and launch bookkeeping on a machine without a GPU. It says
nothing about speed, real concurrency, or cuBLAS: the ``cuda`` tests on a GPU do.
"""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the source checkout: csrc/ lives there
_MODULE = None


def build():
    """The compiled simulator module (built once per process; torch caches the build on disk)."""
    global _MODULE
    if _MODULE is None:
        from torch.utils import cpp_extension

        build_dir = ROOT / "build" / "csim"
        build_dir.mkdir(parents=True, exist_ok=True)
        _MODULE = cpp_extension.load(
            name="duality_kernels_csim",
            sources=[*map(str, sorted((ROOT / "csrc" / "bindings").glob("*.cpp"))),
                     str(ROOT / "csrc" / "sim" / "sim_kernels.cpp")],
            extra_cflags=["-O2", "-DDK_HOST_SIM"],
            extra_include_paths=[str(ROOT / "csrc")],
            build_directory=str(build_dir),
            verbose=bool(os.environ.get("DK_CSIM_VERBOSE")),
        )
    return _MODULE


def enable():
    """Route CPU tensors of backend="cuda" to the simulator."""
    from duality_kernels.ops import cuda as cuda_ops

    cuda_ops._set_simulator(build())


def module_fixture():
    """An autouse, module-scoped pytest fixture (``_simulator = csim.module_fixture()`` in a test
    module): without a GPU, CPU tensors of backend="cuda" run in the simulator for that module's
    tests only; with one, nothing changes."""
    import pytest
    import torch

    @pytest.fixture(scope="module", autouse=True)
    def _simulator():
        if torch.cuda.is_available():
            yield
            return
        from duality_kernels.ops import cuda as cuda_ops

        enable()
        yield
        cuda_ops._set_simulator(None)

    return _simulator
