"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def float64():
    """Exact arithmetic for formula checks: float64 by default, seeded."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(torch.float32)
