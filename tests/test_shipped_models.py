"""Every model shipped in models/ loads, evaluates, and is normalised where that can be enumerated.

A shipped model has too many dimensions (112 to 784) to enumerate all vectors, but each conditional
p(x_d | x_<d) can be enumerated over its values: for every mask, summing it over x_d must give one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from service import checkpoint
from service.made import make_generator
from service.made.fast_sampling import sample_fast

MODELS = sorted(p for p in (Path(__file__).resolve().parent.parent / "models").glob("*/*") if p.is_dir())


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_model_loads_with_its_record_and_is_normalised(path):
    model, config = checkpoint.load(path)
    record = config.training
    assert record is not None and record.best_valid_nll is not None
    if config.mixture:  # made merge: the mixture's record holds each member's training record
        assert record.command.startswith("made merge") and len(record.members) == config.n_masks
        assert all(m["command"].startswith("made train") and m["data_sha256"] for m in record.members)
    else:
        assert record.command.startswith("made train") and record.data_sha256
    assert config.calibration is not None and config.eval_masks <= config.n_masks
    assert all(p.dtype == torch.float32 for p in model.parameters())  # evaluated in float32
    x = sample_fast(model, 16, masks=1, generator=make_generator(0))
    assert bool(model.likelihood.in_support(x).all())
    assert model.likelihood.name == "bernoulli", "extend this test for a non-binary shipped model"
    with torch.no_grad():
        log_p = model.log_prob(x)
        assert torch.isfinite(log_p).all() and (log_p <= 0).all()  # a discrete probability is at most one
        generator = torch.Generator().manual_seed(0)
        for k in sorted({0, config.n_masks - 1}):
            for d in torch.randperm(model.n_dims, generator=generator)[:8].tolist():
                total = torch.zeros(len(x), dtype=torch.float64)
                for value in (0.0, 1.0):  # x_d alone varies: its context x_<d stays as it is
                    variant = x.clone()
                    variant[:, d] = value
                    total += model.conditionals_for_mask(variant, k)[:, d].double().exp()
                assert torch.allclose(total, torch.ones_like(total), atol=1e-5), (k, d)


def test_the_default_model_is_shipped():
    assert any(p.parent.name == "binarized-mnist" for p in MODELS)
    config = checkpoint.read_config(MODELS[[p.parent.name for p in MODELS].index("binarized-mnist")])
    assert config.input_shape == [28, 28]
