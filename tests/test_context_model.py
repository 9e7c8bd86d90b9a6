"""The context model of local structure: contexts as the template says, fitting by counting, and an exactly
normalised distribution (by enumeration on small D)."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.context_model import GATHER_BELOW_ROWS, N_CONTEXTS, ORDER_1D, TEMPLATE_2D, ContextModel


def reference_contexts(x: torch.Tensor, shape) -> torch.Tensor:
    """The context index of every position by the definition, one position at a time."""
    n, d = x.shape
    index = torch.zeros(n, d, dtype=torch.long)
    for i in range(d):
        if shape is None:
            for lag in range(1, ORDER_1D + 1):
                if i - lag >= 0:
                    index[:, i] |= x[:, i - lag].long() << (lag - 1)
        else:
            r, c = divmod(i, shape[1])
            for bit, (dr, dc) in enumerate(TEMPLATE_2D):
                rr, cc = r + dr, c + dc
                if 0 <= rr < shape[0] and 0 <= cc < shape[1]:
                    index[:, i] |= x[:, rr * shape[1] + cc].long() << bit
    return index


def random_table(model: ContextModel, seed: int = 0) -> ContextModel:
    generator = torch.Generator().manual_seed(seed)
    return model.set_probabilities(
        torch.rand(N_CONTEXTS, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    )


@pytest.mark.parametrize("shape", [None, (5, 7), (28, 28)], ids=["1-D", "5x7", "28x28"])
def test_contexts_follow_the_template(shape):
    d = 40 if shape is None else shape[0] * shape[1]
    x = (torch.rand(64, d, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    model = ContextModel(d, shape)
    assert torch.equal(model.contexts(x), reference_contexts(x, shape))
    for rows in (1, GATHER_BELOW_ROWS - 1, GATHER_BELOW_ROWS):  # the few-rows path, and either side of it
        assert torch.equal(model.contexts(x[:rows]), reference_contexts(x[:rows], shape)), rows


@pytest.mark.parametrize("shape", [None, (3, 4)], ids=["1-D", "3x4"])
def test_the_distribution_is_normalised_exactly(shape):
    """Every conditional looks only at earlier positions: the 2^12 probabilities sum to one."""
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=12)))
    model = random_table(ContextModel(12, shape))
    total = model.log_prob(every).exp().sum()
    assert abs(total.item() - 1.0) < 1e-12


def test_fitting_counts_each_context_with_half_a_count_added():
    x = (torch.rand(300, 30, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    model = ContextModel.fit(x, batch_rows=64)  # several batches
    index = reference_contexts(x, None).reshape(-1)
    ones = torch.zeros(N_CONTEXTS, dtype=torch.float64).index_add_(0, index, x.reshape(-1).double())
    seen = torch.bincount(index, minlength=N_CONTEXTS).double()
    assert torch.allclose(model.p_one, (ones + 0.5) / (seen + 1.0))
    assert model.p_one[seen == 0].eq(0.5).all()  # unseen contexts: no preference


def test_a_fitted_model_codes_its_kind_of_data_shorter_than_noise():
    """Stripes (each row a run of ones) are predictable from their neighbours; noise of the same density is
    not: the fitted code length tells them apart by far."""
    generator = torch.Generator().manual_seed(3)
    starts = torch.randint(0, 12, (400, 1), generator=generator)
    columns = torch.arange(36)[None, :] % 6
    stripes = ((columns >= starts % 6) & (columns < starts % 6 + 3)).float()  # 6x6 images, 3-wide bars
    model = ContextModel.fit(stripes[:300], input_shape=(6, 6))
    noise = (torch.rand(100, 36, generator=generator) < stripes.mean()).float()
    assert model.code_length(stripes[300:]).mean() < 0.5 * model.code_length(noise).mean()


def test_a_shape_that_does_not_hold_the_dimensions_is_refused():
    with pytest.raises(ValueError, match="not a 2-D shape"):
        ContextModel(10, (3, 4))
