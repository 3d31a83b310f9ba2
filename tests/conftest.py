import pytest
import torch


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """Hundreds of tiny float64 ops: one intra-op thread beats two contending ones on a 2-core
    machine (30 s vs 100 s for test_official.py under load). Restored after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
