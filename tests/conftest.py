"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is as fast, and far faster on a machine shared with other
    jobs; the previous thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def randomised_tiny_model():
    """The tiny ``FlareModel`` (seed 0) with every parameter nudged by N(0, 0.05^2), in eval mode:
    the zero-initialised released parameters (camera tokens) would otherwise hide bugs."""
    from flare_nb.model.config import tiny
    from flare_nb.model.flare import FlareModel

    torch.manual_seed(0)
    m = FlareModel(tiny()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m
