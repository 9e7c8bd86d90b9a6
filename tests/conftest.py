"""Shared fixtures: small synthetic data and quick training, so tests never touch ../shared/data."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.made import MADEDensity


def all_binary(n_dims: int) -> torch.Tensor:
    """(2^D, D) every binary vector."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_dims)))


def all_categorical(n_dims: int, categories: int) -> torch.Tensor:
    """(K^D, D) every integer vector."""
    return torch.tensor(list(itertools.product(range(categories), repeat=n_dims)), dtype=torch.float32)


def markov_chain(n: int, n_dims: int, stay: float = 0.9, seed: int = 0) -> torch.Tensor:
    """Binary rows where each bit copies the one before with probability `stay`: known structure,
    entropy log 2 + (D-1) H(stay) nats."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, n_dims)
    x[:, 0] = (torch.rand(n, generator=g) < 0.5).float()
    for d in range(1, n_dims):
        flip = (torch.rand(n, generator=g) > stay).float()
        x[:, d] = (x[:, d - 1] + flip) % 2
    return x


def take_training_steps(model: MADEDensity, x: torch.Tensor, steps: int = 40, lr: float = 1e-2) -> MADEDensity:
    """A few Adam steps, cycling masks as training does, so tests see trained (not initial) weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        model.network.use_mask(step % model.n_masks)
        loss = -model.conditionals_for_active_mask(x).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
