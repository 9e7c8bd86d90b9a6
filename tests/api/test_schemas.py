"""Request schemas check what they can on their own; limits that are settings come as the context."""

from __future__ import annotations

import numpy as np
import pytest

from service.api.deps import validate_options
from service.api.errors import InvalidInput
from service.api.schemas import AnomalyOptions, SampleRequest
from service.settings import Settings


def refusal(model, body, settings=None) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        validate_options(model, body, settings)
    return refused.value


def test_n_is_bounded_by_the_servers_max_sample_n_once_the_settings_are_known():
    settings = Settings(max_sample_n=5)
    assert validate_options(SampleRequest, {"n": 5}, settings).n == 5
    over = refusal(SampleRequest, {"n": 6}, settings)
    assert over.message == "n must be between 1 and 5, got 6" and over.details == {"field": "n", "limit": 5}
    assert refusal(SampleRequest, {"n": 0}, settings).details == {"field": "n"}
    assert refusal(AnomalyOptions, {"fpr": 1.0}).details == {"field": "fpr"}


@pytest.mark.parametrize(
    ("observed", "message"),
    [
        ({"indices": [1, 2], "values": [1]}, "observed has 2 indices but 1 values"),
        ({"indices": [1, 1], "values": [1, 0]}, "observed.indices repeats a dimension"),
    ],
)
def test_observed_pairs_are_checked_by_the_schema(observed, message):
    refused = refusal(SampleRequest, {"n": 1, "observed": observed})
    assert refused.message == message and refused.details == {"field": "observed"}


def test_the_observed_row_for_a_model_of_d_dimensions():
    pairs = SampleRequest(n=1, observed={"indices": [3, 0], "values": [1, 0]})
    row = pairs.observed_row(4)
    assert row[0] == 0 and row[3] == 1 and np.isnan(row[1:3]).all()
    assert np.isnan(SampleRequest(n=1, observed=[1, None]).observed_row(2)).tolist() == [False, True]
    assert SampleRequest(n=1).observed_row(4) is None
    for request, d, message in (
        (pairs, 3, "index 3 is out of range for 3 dimensions"),
        (SampleRequest(n=1, observed=[1, 0]), 2, "nothing left to sample"),
        (SampleRequest(n=1, observed=[1, None]), 3, "observed has 2 values"),
    ):
        with pytest.raises(ValueError, match=message):
            request.observed_row(d)
