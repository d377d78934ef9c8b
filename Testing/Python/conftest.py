"""Shared fixtures. The real-data fixtures are crops committed under Testing/Data (see LICENSES.md)."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "IQTEnhance"))

from IQTEnhanceLib.data import load_fixture  # noqa: E402


@pytest.fixture(scope="session")
def colin():
    """Colin27 T1 crop (held-out subject): (Volume float32, mask Volume)."""
    return load_fixture("colin27_t1")


@pytest.fixture(scope="session")
def icbm_t1():
    return load_fixture("icbm2009c_t1")


@pytest.fixture(scope="session")
def icbm_t2():
    return load_fixture("icbm2009c_t2")


@pytest.fixture
def one_torch_thread():
    """For the network tests: the networks there are small, one thread is as fast as two, and on a loaded
    2-core machine two threads thrash (measured under load 8: the DL overfit test took 171 s with 2
    threads, 20 s with 1)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def cuda_available():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA GPU on this machine")
