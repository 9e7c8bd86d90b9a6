"""The stored layout as pure functions: shapes from the config, mixtures joined and split, the entries the
masked layout keeps, int8 rows; none of them touches a live model."""

from __future__ import annotations

import pytest
import torch

from service.checkpoint import layout
from service.checkpoint.schema import CheckpointConfig
from service.made import build, merge
from tests.helpers import markov_chain, take_training_steps

CONFIGS = [
    dict(hidden_sizes=(12,)),
    dict(hidden_sizes=(12, 9), direct_connections=True, mask_conditioning=True, n_masks=3),
    dict(hidden_sizes=(), direct_connections=True, n_masks=2),
]


def cpu_state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


@pytest.mark.parametrize("options", CONFIGS)
def test_the_dense_layout_is_the_network_state_dict(options):
    model = build(5, "categorical", categories=3, order="random", **options)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert layout.tensor_shapes(model.config) == shapes


@pytest.mark.parametrize("options", CONFIGS)
def test_kept_entries_are_the_union_of_the_stored_masks(options):
    model = build(6, "mog", components=2, order="random", **options)
    before = {name: m.mask.clone() for name, m in model.network.named_modules() if hasattr(m, "mask")}
    keep = layout.kept_entries(model.config, cpu_state(model))
    union = {name: torch.zeros_like(mask) for name, mask in before.items()}
    for k in range(model.n_masks):
        model.network.use_mask(k)
        for name, m in model.network.named_modules():
            if hasattr(m, "mask"):
                union[name] |= m.mask
    expected = {
        f"network.{name}.{param}": mask
        for name, mask in union.items()
        for param in ("weight", "cond_weight")
        if getattr(model.network.get_submodule(name), param) is not None
    }
    assert keep.keys() == expected.keys()
    assert all(torch.equal(keep[name], expected[name]) for name in keep)


def members(D: int = 6, hidden=((7, 5), (4, 9), (6, 3))):
    return [
        build(D, "bernoulli", hidden_sizes=h, order="random", direct_connections=True, seed=k)
        for k, h in enumerate(hidden)
    ]


def test_a_mixture_joins_into_block_diagonal_layers_and_splits_back_exactly():
    parts = members()
    for m in parts:
        take_training_steps(m, markov_chain(32, 6), steps=3)
    config = merge(parts).config
    joined = layout.join_members(config, [cpu_state(m) for m in parts])
    assert {name: tuple(t.shape) for name, t in joined.items()} == layout.tensor_shapes(config)
    # member 1's units are the second block of each layer: it reads member 1's block of the layer before
    assert torch.equal(
        joined["network.hidden.1.weight"][5:14, 7:11], parts[1].network.hidden[1].weight.detach()
    )
    assert torch.all(joined["network.hidden.1.weight"][5:14, :7] == 0)
    assert torch.all(joined["network.hidden_degrees_0"][1, :7] == layout.UNUSED)
    for part, split in zip(parts, layout.split_members(config, joined), strict=True):
        assert split.keys() == part.state_dict().keys()
        assert all(torch.equal(split[name], t) for name, t in part.state_dict().items())


def test_kept_entries_of_a_mixture_stay_inside_each_member_block():
    parts = members()
    config = merge(parts).config
    keep = layout.kept_entries(config, layout.join_members(config, [cpu_state(m) for m in parts]))
    own = layout.join_members(
        config, [cpu_state(m) | layout.kept_entries(m.config, cpu_state(m)) for m in parts]
    )
    for name in keep:
        assert torch.equal(keep[name], own[name].bool()), name


def test_blocks_that_overlap_or_break_are_refused():
    config = merge(members()).config
    degrees = layout.join_members(config, [cpu_state(m) for m in members()])
    shared = {**degrees, "network.hidden_degrees_0": degrees["network.hidden_degrees_0"].clone()}
    shared["network.hidden_degrees_0"][2, 0] = 1
    with pytest.raises(ValueError, match="more than one mask"):
        layout.regions(config, shared)
    broken = {**degrees, "network.hidden_degrees_1": degrees["network.hidden_degrees_1"].clone()}
    broken["network.hidden_degrees_1"][0, 2] = layout.UNUSED
    with pytest.raises(ValueError, match="not one contiguous block"):
        layout.regions(config, broken)


def test_int8_rows_round_within_half_a_step_and_pack_and_unpack_exactly():
    model = build(6, "bernoulli", hidden_sizes=(10,), order="random", direct_connections=True)
    take_training_steps(model, markov_chain(32, 6), steps=5)
    config = CheckpointConfig.describing(model, weights_dtype="int8", weights_layout="masked")
    state = cpu_state(model)
    keep = layout.kept_entries(config, state)
    names = layout.masked_names(config)
    stored = layout.pack_masked(layout.quantize(state, names, keep), keep)
    assert all(stored[name].dim() == 1 and stored[name].dtype == torch.int8 for name in names)
    restored = layout.dequantize(layout.unpack_masked(stored, keep), names)
    for name in names:
        scale = stored[name + layout.SCALE_SUFFIX][:, None]
        assert torch.all((restored[name] - state[name] * keep[name]).abs() <= scale / 2 + 1e-7)
        assert torch.all(restored[name][~keep[name]] == 0)
    with pytest.raises(ValueError, match="masked layout"):
        layout.unpack_masked({**stored, names[0]: stored[names[0]][1:]}, keep)
