"""Checkpoints round-trip exactly, and anything missing, corrupt, truncated, pickled or inconsistent is
refused with one CheckpointError that names the problem."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from service import checkpoint
from service.checkpoint import CheckpointError
from service.checkpoint.layout import SCALE_SUFFIX
from service.made import build, merge
from service.made.layers import MaskedLinear
from tests.helpers import all_binary, markov_chain, take_training_steps

HEADS = {
    "bernoulli": dict(),
    "categorical": dict(categories=4),
    "gaussian": dict(shift=torch.linspace(-3, 3, 6), scale=torch.linspace(0.5, 2, 6)),
    "mog": dict(components=3, shift=torch.linspace(-3, 3, 6), scale=torch.linspace(0.5, 2, 6)),
}


def data_for(likelihood: str, n: int = 64) -> torch.Tensor:
    if likelihood == "bernoulli":
        return markov_chain(n, 6)
    if likelihood == "categorical":
        return torch.randint(0, 4, (n, 6)).float()
    return torch.randn(n, 6) * 2


def masked_layers(model) -> dict[str, MaskedLinear]:
    """State-dict prefix -> masked layer, e.g. "network.hidden.0", "network.output", "network.direct"."""
    return {f"network.{name}": m for name, m in model.network.named_modules() if isinstance(m, MaskedLinear)}


@pytest.fixture
def saved(tmp_path):
    model = build(
        6,
        "bernoulli",
        hidden_sizes=(16, 16),
        n_masks=3,
        order="random",
        direct_connections=True,
        mask_conditioning=True,
    )
    take_training_steps(model, markov_chain(64, 6), steps=10)
    checkpoint.save(model, tmp_path / "m", training={"seed": 0, "epochs": 1})
    return model, tmp_path / "m"


@pytest.mark.parametrize("likelihood", list(HEADS))
def test_round_trip_gives_identical_log_probs(tmp_path, likelihood):
    model = build(
        6,
        likelihood,
        hidden_sizes=(16, 12),
        n_masks=3,
        order="random",
        direct_connections=True,
        mask_conditioning=True,
        eval_masks=2,
        **HEADS[likelihood],
    )
    x = data_for(likelihood)
    take_training_steps(model, x, steps=10)
    checkpoint.save(model, tmp_path / "m", input_shape=[2, 3], training={"seed": 5})
    loaded, config = checkpoint.load(tmp_path / "m")
    assert config.input_shape == [2, 3] and config.eval_masks == 2 and config.training.seed == 5
    assert loaded.resolve_masks(None) == 2
    with torch.no_grad():
        for masks in (1, 2, 3):
            assert torch.equal(loaded.log_prob(x, masks=masks), model.log_prob(x, masks=masks))
    assert not any((tmp_path / "m").glob("*.tmp"))
    for name in (
        checkpoint.CONFIG_FILE,
        checkpoint.WEIGHTS_FILE,
    ):  # readable by a server running as another user
        assert (tmp_path / "m" / name).stat().st_mode & 0o044 == 0o044


@pytest.mark.parametrize("likelihood", list(HEADS))
def test_one_mask_models_store_only_the_weights_their_mask_keeps(tmp_path, likelihood):
    model = build(
        6,
        likelihood,
        hidden_sizes=(40, 30),
        direct_connections=True,
        mask_conditioning=True,
        order="random",
        **HEADS[likelihood],
    )
    x = data_for(likelihood)
    take_training_steps(model, x, steps=10)
    checkpoint.save(model, tmp_path / "masked")
    checkpoint.save(model, tmp_path / "dense", weights_layout="dense")
    loaded, config = checkpoint.load(tmp_path / "masked")
    assert config.weights_layout == "masked"
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), model.log_prob(x))  # the dropped weights never mattered
    dense_bytes = (tmp_path / "dense" / checkpoint.WEIGHTS_FILE).stat().st_size
    masked_bytes = (tmp_path / "masked" / checkpoint.WEIGHTS_FILE).stat().st_size
    assert masked_bytes < 0.75 * dense_bytes
    for name, layer in masked_layers(loaded).items():  # what was dropped comes back as zeros
        assert torch.all(layer.weight[layer.mask == 0] == 0), name


def test_a_masked_tensor_with_the_wrong_count_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build(6, "bernoulli", hidden_sizes=(16,))
    checkpoint.save(model, tmp_path / "m")
    path = tmp_path / "m" / checkpoint.WEIGHTS_FILE
    tensors = load_file(str(path))
    tensors["network.output.weight"] = tensors["network.output.weight"][:-1].contiguous()
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"tensor network.output.weight \(masked layout\) holds"):
        checkpoint.load(tmp_path / "m")


def test_float16_storage_loads_as_float32(tmp_path):
    model = build(6, "bernoulli", hidden_sizes=(16,), n_masks=2)
    take_training_steps(model, markov_chain(64, 6), steps=10)
    checkpoint.save(model, tmp_path / "m", weights_dtype="float16")
    loaded, config = checkpoint.load(tmp_path / "m")
    assert config.weights_dtype == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = markov_chain(64, 6)
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(x), model.log_prob(x), atol=1e-2)


def test_a_mixture_round_trips_storing_only_what_its_masks_keep(tmp_path):
    x = data_for("categorical")
    model = merge(
        [
            take_training_steps(
                build(
                    6,
                    "categorical",
                    categories=4,
                    hidden_sizes=(10, 7),
                    order="random",
                    direct_connections=True,
                    seed=k,
                ),
                x,
                steps=10,
            )
            for k in range(3)
        ]
    )
    checkpoint.save(model, tmp_path / "masked")
    checkpoint.save(model, tmp_path / "dense", weights_layout="dense")
    loaded, config = checkpoint.load(tmp_path / "masked")
    assert config.mixture and config.weights_layout == "masked" and loaded.config == model.config
    with torch.no_grad():
        for masks in (1, 2, 3):
            assert torch.equal(loaded.log_prob(x, masks=masks), model.log_prob(x, masks=masks))
    # Each hidden unit belongs to one member: a third of the hidden-to-hidden block, about half of the rest.
    dense_bytes = (tmp_path / "dense" / checkpoint.WEIGHTS_FILE).stat().st_size
    assert (tmp_path / "masked" / checkpoint.WEIGHTS_FILE).stat().st_size < 0.5 * dense_bytes


def test_a_mixture_whose_members_share_units_is_refused(tmp_path):
    model = merge([build(6, "bernoulli", hidden_sizes=(6,), order="random", seed=k) for k in range(2)])
    checkpoint.save(model, tmp_path / "m", weights_layout="dense")

    def share(tensors):
        tensors["network.hidden_degrees_0"][1, 0] = 3  # unit 0 is mask 0's: now mask 1 uses it too

    rewrite_tensors(tmp_path / "m", share)
    with pytest.raises(CheckpointError, match="a unit is used by more than one mask"):
        checkpoint.load(tmp_path / "m")


@pytest.mark.parametrize("layout", ["masked", "dense"])
def test_int8_storage_is_within_half_a_step_of_every_weight(tmp_path, layout):
    from safetensors.torch import load_file

    model = build(
        6,
        "bernoulli",
        hidden_sizes=(40, 30),
        direct_connections=True,
        order="random",
        n_masks=1 if layout == "masked" else 2,
    )
    take_training_steps(model, markov_chain(64, 6), steps=10)
    checkpoint.save(model, tmp_path / "m", weights_dtype="int8", weights_layout=layout)
    stored = load_file(str(tmp_path / "m" / checkpoint.WEIGHTS_FILE))
    loaded, config = checkpoint.load(tmp_path / "m")
    assert config.weights_dtype == "int8"
    for name, layer in masked_layers(model).items():
        assert stored[f"{name}.weight"].dtype == torch.int8
        scale = stored[f"{name}.weight{SCALE_SUFFIX}"]  # (out,)
        kept = layer.weight * layer.mask if layout == "masked" else layer.weight
        assert torch.allclose(scale, kept.detach().abs().amax(1) / 127)
        error = (loaded.get_submodule(name).weight * layer.mask - layer.weight * layer.mask).abs()
        assert torch.all(error <= scale[:, None] / 2 + 1e-7), name
    with torch.no_grad():  # still an exact, normalised MADE: of the rounded weights
        assert abs(torch.logsumexp(loaded.log_prob(all_binary(6)).double(), 0).item()) < 1e-5
        x = markov_chain(64, 6)
        assert torch.allclose(loaded.log_prob(x), model.log_prob(x), atol=0.05)


def test_int8_tensors_must_be_int8_with_their_scales(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build(6, "bernoulli", hidden_sizes=(16,))
    checkpoint.save(model, tmp_path / "m", weights_dtype="int8")
    path = tmp_path / "m" / checkpoint.WEIGHTS_FILE
    tensors = load_file(str(path))
    save_file({**tensors, "network.output.weight": tensors["network.output.weight"].float()}, str(path))
    with pytest.raises(CheckpointError, match="network.output.weight .* should be int8"):
        checkpoint.load(tmp_path / "m")
    del tensors["network.output.weight.scale"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"missing tensors \['network.output.weight.scale'\]"):
        checkpoint.load(tmp_path / "m")


def test_truncated_weights_are_refused(saved):
    _, path = saved
    weights = path / checkpoint.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load(path)


def test_corrupt_weights_are_refused(saved):
    _, path = saved
    (path / checkpoint.WEIGHTS_FILE).write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{garbage" + bytes(100))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load(path)


def test_a_pickle_is_refused_without_being_unpickled(saved, monkeypatch):
    model, path = saved
    torch.save(model.state_dict(), path / checkpoint.WEIGHTS_FILE)

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load(path)
    (path / checkpoint.WEIGHTS_FILE).write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load(path)


def test_a_directory_of_pickles_is_refused_by_name(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="pickle checkpoints are never loaded"):
        checkpoint.load(tmp_path)


def test_missing_pieces(tmp_path, saved):
    with pytest.raises(CheckpointError, match="not a directory"):
        checkpoint.load(tmp_path / "nowhere")
    _, path = saved
    (path / checkpoint.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no weights.safetensors"):
        checkpoint.load(path)
    (path / checkpoint.CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        checkpoint.load(path)


def edit_config(path, **changes):
    config = json.loads((path / checkpoint.CONFIG_FILE).read_text())
    config.update(changes)
    (path / checkpoint.CONFIG_FILE).write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(hidden_sizes=[16, 17]), r"has shape \[(3, )?16\], the config implies \[(3, )?17\]"),
        (dict(hidden_sizes=[16]), "unexpected tensors"),
        (dict(direct_connections=False), "unexpected tensors"),
        (dict(mask_conditioning=False), "unexpected tensors"),
        (dict(n_masks=4, eval_masks=1), r"degrees_0 has shape \[3, 16\], the config implies \[4, 16\]"),
        (dict(format_version=99), "format_version 99 is not supported"),
        (dict(eval_masks=9), "eval_masks=9 exceeds n_masks=3"),
        (dict(input_shape=[5, 5]), "does not hold n_dims=6"),
        (dict(likelihood={"name": "categorical"}), "needs 'categories'"),
        (dict(likelihood={"name": "gaussian"}), "needs 'standardisation'"),
        (dict(format="something-else"), "not a made checkpoint"),
        (dict(n_dims="six"), "n_dims"),
        (
            dict(weights_layout="masked"),
            "weights_layout 'masked' needs a one-mask model or a mixture, not n_masks=3",
        ),
        (
            dict(mixture=True),
            "invalid: config: Value error, a mixture has a fixed set of masks without mask conditioning",
        ),
    ],
)
def test_incompatible_configs_are_refused(saved, changes, message):
    _, path = saved
    edit_config(path, **changes)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_invalid_json_is_refused(saved):
    _, path = saved
    (path / checkpoint.CONFIG_FILE).write_text('{"format": "made-checkpoint", ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(path)


def rewrite_tensors(path, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / checkpoint.WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(path / checkpoint.WEIGHTS_FILE))


def test_invalid_degrees_are_refused(saved):
    _, path = saved

    def duplicate_degree(t):
        t["network.input_degrees"][1, 0] = t["network.input_degrees"][1, 1]

    rewrite_tensors(path, duplicate_degree)
    with pytest.raises(CheckpointError, match="invalid mask degrees"):
        checkpoint.load(path)


def test_non_finite_weights_are_refused(saved):
    _, path = saved
    rewrite_tensors(path, lambda t: t["network.output.bias"].__setitem__(0, float("nan")))
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        checkpoint.load(path)


def test_a_safetensors_header_whose_length_starts_with_the_pickle_opcode_still_loads(saved):
    """Regression: the first 8 bytes of safetensors are the header length, so a valid file can begin with
    0x80, the byte that starts a pickle. It was once refused as a pickle (found on a trained dna model)."""
    from safetensors.torch import load_file, save_file

    model, path = saved
    weights = path / checkpoint.WEIGHTS_FILE
    tensors = load_file(str(weights))
    for pad in range(256):
        save_file(tensors, str(weights), metadata={"format": "made-checkpoint", "pad": "x" * pad})
        if weights.read_bytes()[0] == 0x80:
            break
    assert weights.read_bytes()[0] == 0x80
    loaded, _ = checkpoint.load(path)
    x = markov_chain(16, 6)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), model.log_prob(x))


@pytest.mark.parametrize("weights_dtype", ["float32", "int8"])
def test_saving_only_reads_the_model(tmp_path, weights_dtype):
    model = merge(
        [
            build(6, "bernoulli", hidden_sizes=(8, 5), order="random", direct_connections=True, seed=k)
            for k in range(2)
        ]
    )
    model.conditionals_for_mask(markov_chain(4, 6), 1)  # component 1 active, as after a request

    def fingerprint():
        tensors = [*model.named_parameters(), *model.named_buffers()]
        return {name: (t.data_ptr(), t._version, t.clone()) for name, t in tensors}

    before = fingerprint()
    checkpoint.save(model, tmp_path / "m", weights_dtype=weights_dtype)
    after = fingerprint()
    assert before.keys() == after.keys()
    for name, (ptr, version, value) in before.items():
        assert after[name][:2] == (ptr, version) and torch.equal(after[name][2], value), name
