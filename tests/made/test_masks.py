"""The paper's degree and mask rules, checked by hand."""

from __future__ import annotations

import itertools

import pytest
import torch

from service.made import build
from service.made.masks import check_degrees, degrees_from_ordering, make_ordering


def test_degrees_and_masks_follow_the_paper():
    D, hidden = 9, (40, 30, 20)
    model = build(
        D,
        "categorical",
        categories=3,
        hidden_sizes=hidden,
        n_masks=5,
        order="random",
        direct_connections=True,
        seed=7,
    )
    net = model.network
    for k in range(net.config.n_masks):
        net.use_mask(k)
        m_in = net.input_degrees[k].tolist()
        assert sorted(m_in) == list(range(1, D + 1))
        previous = m_in
        for layer, m in zip(net.hidden, net.hidden_degrees(k), strict=True):
            m = m.tolist()
            assert min(m) >= min(previous) and max(m) <= D - 1
            for i, j in itertools.product(range(len(m)), range(len(previous))):
                assert layer.mask[i, j] == float(m[i] >= previous[j])
            previous = m
        P = net.config.params_per_dim
        for out, j in itertools.product(range(P * D), range(len(previous))):
            assert net.output.mask[out, j] == float(m_in[out % D] > previous[j])
        for out, j in itertools.product(range(P * D), range(D)):
            assert net.direct.mask[out, j] == float(m_in[out % D] > m_in[j])


@pytest.mark.parametrize(
    "kind,expected", [("natural", [0, 1, 2, 3]), ("reversed", [3, 2, 1, 0]), ([2, 0, 3, 1], [2, 0, 3, 1])]
)
def test_orderings(kind, expected):
    model = build(4, hidden_sizes=(10,), order=kind)
    assert model.network.ordering(0).tolist() == expected
    assert degrees_from_ordering(torch.tensor(expected)).tolist() == model.network.input_degrees[0].tolist()


def test_bad_orderings_are_refused():
    with pytest.raises(ValueError, match="permutation"):
        make_ordering([0, 0, 1], 3)
    with pytest.raises(ValueError, match="unknown ordering"):
        make_ordering("sideways", 3)


def test_check_degrees_rejects_invalid_sets():
    check_degrees(torch.tensor([2, 1, 3]), [torch.tensor([1, 2, 2])], 3)
    with pytest.raises(ValueError, match="permutation"):
        check_degrees(torch.tensor([1, 1, 3]), [torch.tensor([1, 2])], 3)
    with pytest.raises(ValueError, match="outside"):
        check_degrees(torch.tensor([1, 2, 3]), [torch.tensor([0, 3])], 3)
