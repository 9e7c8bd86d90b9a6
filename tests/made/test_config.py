"""One architecture config: validated once, round-tripped whole through JSON and checkpoints."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service import checkpoint
from service.checkpoint import CheckpointConfig
from service.made import MADEConfig, MADEDensity, build, merge


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(n_masks=2, eval_masks=3), "eval_masks=3 exceeds n_masks=2"),
        (dict(order=[0, 0, 1, 2]), "permutation of 0..3"),
        (dict(order="sideways"), "unknown order 'sideways'"),
        (dict(activation="swish"), "activation"),
        (dict(dropout=1.0), "dropout"),
        (dict(likelihood={"name": "categorical"}), "needs 'categories'"),
        (dict(mixture=True, n_masks=2, mask_conditioning=True), "fixed set of masks"),
        (dict(mixture=True, n_masks=3, hidden_sizes=[2]), "at least 3 units"),
        (dict(unknown_field=1), "unknown_field"),
    ],
)
def test_invalid_architectures_are_refused_with_the_reason(options, message):
    with pytest.raises(ValidationError, match=message):
        MADEConfig(n_dims=4, **options)


def test_eval_masks_defaults_to_every_stored_mask():
    assert MADEConfig(n_dims=4, n_masks=5).eval_masks == 5


def test_a_config_round_trips_whole_through_json_and_the_checkpoint_schema():
    config = MADEConfig(
        n_dims=6,
        likelihood={"name": "mog", "components": 3},
        hidden_sizes=[9, 7],
        n_masks=3,
        eval_masks=2,
        mask_resampling="order",
        order="random",
        direct_connections=True,
        mask_conditioning=True,
        activation="tanh",
        dropout=0.25,
        seed=5,
    )
    assert MADEConfig.model_validate_json(config.model_dump_json()) == config
    model = MADEDensity.from_config(config)
    stored = CheckpointConfig.describing(model, input_shape=[2, 3])
    assert stored.architecture == config
    assert CheckpointConfig.model_validate_json(stored.model_dump_json()) == stored


def test_config_json_stays_flat_as_every_checkpoint_has_it(tmp_path):
    model = build(4, "categorical", categories=3, hidden_sizes=(8,), n_masks=2)
    checkpoint.save(model, tmp_path / "m", input_shape=[2, 2])
    raw = json.loads((tmp_path / "m" / checkpoint.CONFIG_FILE).read_text())
    assert set(MADEConfig.model_fields) <= set(raw) and raw["likelihood"] == {
        "name": "categorical",
        "categories": 3,
    }
    assert raw["hidden_sizes"] == [8] and raw["input_shape"] == [2, 2] and raw["format"] == "made-checkpoint"
    loaded, config = checkpoint.load(tmp_path / "m")
    assert loaded.config == model.config == config.architecture


def test_a_mixture_config_describes_its_members_side_by_side():
    members = [
        build(5, "bernoulli", hidden_sizes=h, order="random", seed=k, dropout=0.1)
        for k, h in enumerate([(6, 4), (3, 8)])
    ]
    config = merge(members).config
    assert config.mixture and config.n_masks == config.eval_masks == 2 and config.hidden_sizes == [9, 12]
    assert (config.order, config.seed, config.dropout) == ("random", 0, 0.1)  # the first member's
