import os

import torch

# Without a GPU the Triton kernels run under the Triton interpreter on CPU tensors (docs/design.md
# convention 10). The variable must be set before triton is first imported, so here, before any
# test module loads duality_kernels.ops.triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # Import our kernel modules now, under that setting: @triton.jit decides at decoration time
    # whether a function is interpreted, so a test that sets TRITON_INTERPRET=0 (to check the
    # device rules) must not be the first to import them, or every later interpreter test would
    # call GPU-compiled helpers ("Cannot call @triton.jit'd outside of the scope of a kernel").
    try:
        import duality_kernels.ops.triton.gram  # noqa: F401
        import duality_kernels.ops.triton.lse  # noqa: F401
        import duality_kernels.ops.triton.spectral  # noqa: F401
    except Exception:  # pragma: no cover - triton missing or broken: its tests skip themselves
        pass

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Hundreds of tiny float64 ops: one intra-op thread beats two contending ones on a 2-core
    machine (30 s vs 100 s for test_official.py under load). Restored after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
