"""Shared fixtures. Shared functions (synthetic data, quick training, the autoregressive check) are in
tests/helpers.py, so tests never touch ../shared/data."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
