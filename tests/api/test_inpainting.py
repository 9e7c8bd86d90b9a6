"""Conditional sampling and marginal likelihoods over HTTP."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from service import checkpoint
from service.made.conditional import marginal_log_prob


def test_samples_keep_the_observed_values_and_are_seeded(server):
    spec = {"indices": [0, 3, 7], "values": [1, 0, 1]}
    first = server.client.post("/v1/models/tiny/sample", json={"n": 50, "seed": 4, "observed": spec}).json()
    again = server.client.post("/v1/models/tiny/sample", json={"n": 50, "seed": 4, "observed": spec}).json()
    samples = np.array(first["samples"])
    assert first["samples"] == again["samples"] and samples.shape == (50, 8)
    assert (samples[:, [0, 3, 7]] == [1, 0, 1]).all()
    assert len({tuple(r) for r in samples}) > 1  # the rest is drawn, not copied
    as_row = [1, None, None, 0, None, None, None, 1]
    same = server.client.post("/v1/models/tiny/sample", json={"n": 50, "seed": 4, "observed": as_row}).json()
    assert same["samples"] == first["samples"]


def test_a_fixed_order_model_conditions_on_a_prefix(server):
    answer = server.client.post(
        "/v1/models/tiny-fixed/sample",
        json={"n": 20, "observed": {"indices": [0, 1, 2], "values": [1, 1, 0]}},
    )
    assert answer.status_code == 200
    assert (np.array(answer.json()["samples"])[:, :3] == [1, 1, 0]).all()


def test_log_prob_of_rows_with_nulls_is_their_marginal(server, repository):
    model, _ = checkpoint.load(repository / "tiny" / "1")
    rows = [[1, None, 0, None, 1, 1, None, 0], [None] * 8, [0, 1, 1, 0, 0, 1, 1, 0]]
    answer = server.client.post("/v1/models/tiny/log-prob", json={"inputs": rows, "masks": 3}).json()
    x = torch.tensor([[np.nan if v is None else v for v in r] for r in rows])
    with torch.no_grad():
        expected = marginal_log_prob(model, x, masks=3).numpy()
        full = model.log_prob(x[2:], masks=3).numpy()
    np.testing.assert_allclose(answer["log_prob"], expected, atol=1e-5)
    assert answer["log_prob"][1] == 0.0  # nothing observed
    np.testing.assert_allclose(answer["log_prob"][2], full[0], atol=1e-5)  # nothing missing: the joint
    buffer = io.BytesIO()
    np.save(buffer, x.numpy())
    npy = server.client.post(
        "/v1/models/tiny/log-prob?masks=3",
        content=buffer.getvalue(),
        headers={"content-type": "application/x-npy"},
    ).json()
    np.testing.assert_allclose(npy["log_prob"], expected, atol=1e-5)


def test_inpainting_png_shows_the_query_and_the_completions(server):
    png = server.client.post(
        "/v1/models/tiny/sample",
        headers={"accept": "image/png"},
        json={"n": 8, "seed": 1, "observed": {"indices": [0, 1, 2, 3], "values": [1, 0, 1, 0]}},
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.mode == "RGB"
    # 9 tiles (the query and 8 completions) of 2x4 pixels in a 3x3 grid, 1-pixel gaps, scaled 2x
    assert image.size == ((3 * 5 + 1) * 2, (3 * 3 + 1) * 2)
