"""Checkpoints: a model version is a directory holding `config.json` and `weights.safetensors`.

config.json describes the architecture, the likelihood, the standardisation statistics and how the model
was trained; weights.safetensors holds the weights and the mask degree vectors. Loading validates the
config, then checks the tensors against what the config implies, and fails with one `CheckpointError`
naming the problem. Nothing is ever unpickled: safetensors is a flat header plus raw bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .calibration import Calibration
from .made import MADE, MADEConfig, MADEDensity, make_likelihood
from .made.layers import MaskedLinear
from .made.masks import check_degrees, check_mixture_blocks

FORMAT = "made-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
# Storage dtype of the floating-point tensors. "int8" quantizes the masked layers' weight matrices (below)
# and keeps the other, small, tensors (biases, scales) in float32.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float32}
SCALE_SUFFIX = ".scale"  # int8: the per-row scale of a quantized weight, stored beside it


class CheckpointError(Exception):
    """A checkpoint that is missing, corrupt, truncated or incompatible."""


class LikelihoodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["bernoulli", "categorical", "gaussian", "mog"]
    categories: Annotated[int, Field(ge=2)] | None = None
    components: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _head_options(self):
        if self.name == "categorical" and self.categories is None:
            raise ValueError("a categorical likelihood needs 'categories'")
        if self.name == "mog" and self.components is None:
            raise ValueError("a mog likelihood needs 'components'")
        return self


class Standardisation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shift: list[float]
    scale: list[Annotated[float, Field(gt=0)]]


class TrainingRecord(BaseModel):
    """How the weights were made. Extra keys are kept: the record grows with the trainer."""

    model_config = ConfigDict(extra="allow")
    command: str | None = None
    data_file: str | None = None
    data_sha256: str | None = None
    valid_sha256: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    best_valid_nll: float | None = None
    valid_masks: int | None = None
    seed: int | None = None
    package_version: str | None = None
    date: str | None = None


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["made-checkpoint"] = FORMAT
    format_version: int = FORMAT_VERSION
    likelihood: LikelihoodSpec
    n_dims: Annotated[int, Field(ge=1)]
    input_shape: list[Annotated[int, Field(ge=1)]] | None = None
    hidden_sizes: list[Annotated[int, Field(ge=1)]]
    activation: str = "relu"
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    direct_connections: bool = False
    mask_conditioning: bool = False
    n_masks: Annotated[int, Field(ge=1)] = 1
    mask_resampling: Literal["both", "order", "connectivity"] = "both"
    fresh_masks: bool = False
    order: str | list[int] = "natural"
    eval_masks: Annotated[int, Field(ge=1)] = 1
    seed: int = 0
    # a mixture of n_masks MADEs: each mask has its own hidden units and output rows (`made merge`)
    mixture: bool = False
    standardisation: Standardisation | None = None
    # "int8": each masked weight matrix row as int8 values times one float32 scale (w = q * scale)
    weights_dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float32"
    # "masked": a one-mask model or a mixture stores only the weights some mask keeps (about half),
    # each matrix flattened row-major
    weights_layout: Literal["dense", "masked"] = "dense"
    training: TrainingRecord | None = None
    calibration: Calibration | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this build reads {FORMAT_VERSION})"
            )
        if self.weights_layout == "masked" and self.n_masks != 1 and not self.mixture:
            raise ValueError(
                f"weights_layout 'masked' needs a one-mask model or a mixture, not n_masks={self.n_masks}"
            )
        if self.eval_masks > self.n_masks:
            raise ValueError(f"eval_masks={self.eval_masks} exceeds n_masks={self.n_masks}")
        if self.calibration is not None and self.calibration.masks > self.n_masks:
            raise ValueError(f"calibration.masks={self.calibration.masks} exceeds n_masks={self.n_masks}")
        if self.input_shape is not None and _prod(self.input_shape) != self.n_dims:
            raise ValueError(f"input_shape {self.input_shape} does not hold n_dims={self.n_dims} values")
        real = self.likelihood.name in ("gaussian", "mog")
        if real and self.standardisation is None:
            raise ValueError("a real-valued likelihood needs 'standardisation' statistics")
        if self.standardisation is not None:
            s = self.standardisation
            if len(s.shift) != self.n_dims or len(s.scale) != self.n_dims:
                raise ValueError("standardisation shift/scale must have n_dims entries each")
        return self

    def network_config(self) -> MADEConfig:
        head = self.make_likelihood()
        return MADEConfig(
            n_dims=self.n_dims,
            hidden_sizes=self.hidden_sizes,
            params_per_dim=head.params_per_dim,
            n_masks=self.n_masks,
            mask_resampling=self.mask_resampling,
            order=self.order,
            fresh_masks=self.fresh_masks,
            eval_masks=self.eval_masks,
            direct_connections=self.direct_connections,
            mask_conditioning=self.mask_conditioning,
            activation=self.activation,
            dropout=self.dropout,
            seed=self.seed,
            mixture=self.mixture,
        )

    def make_likelihood(self):
        spec = self.likelihood
        return make_likelihood(spec.name, categories=spec.categories, components=spec.components)


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def config_for(
    model: MADEDensity,
    input_shape: list[int] | None = None,
    training: dict | None = None,
    calibration: Calibration | None = None,
    weights_dtype: str = "float32",
    weights_layout: str = "dense",
) -> CheckpointConfig:
    net = model.network.config
    standardisation = None
    if model.likelihood.real_valued:
        standardisation = Standardisation(shift=model.shift.tolist(), scale=model.scale.tolist())
    return CheckpointConfig(
        likelihood=LikelihoodSpec(**model.likelihood.spec()),
        n_dims=net.n_dims,
        input_shape=input_shape,
        hidden_sizes=list(net.hidden_sizes),
        activation=net.activation,
        dropout=net.dropout,
        direct_connections=net.direct_connections,
        mask_conditioning=net.mask_conditioning,
        n_masks=net.n_masks,
        mask_resampling=net.mask_resampling,
        fresh_masks=net.fresh_masks,
        order=net.order,
        eval_masks=net.eval_masks,
        seed=net.seed,
        mixture=net.mixture,
        standardisation=standardisation,
        weights_dtype=weights_dtype,
        weights_layout=weights_layout,
        training=TrainingRecord(**training) if training is not None else None,
        calibration=calibration,
    )


def save(
    model: MADEDensity,
    directory: str | os.PathLike,
    *,
    input_shape: list[int] | None = None,
    training: dict | None = None,
    calibration: Calibration | None = None,
    weights_dtype: str = "float32",
    weights_layout: str | None = None,
) -> CheckpointConfig:
    """Write config.json and weights.safetensors; each file appears whole (written aside, then renamed).
    `weights_layout` defaults to "masked" for one-mask models and mixtures (the weights no mask uses are
    not stored: about half the file) and "dense" otherwise."""
    if weights_layout is None:
        net = model.network.config
        weights_layout = "masked" if net.n_masks == 1 or net.mixture else "dense"
    config = config_for(model, input_shape, training, calibration, weights_dtype, weights_layout)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[weights_dtype]
    state = model.state_dict()
    keep = _kept_entries(model) if weights_layout == "masked" else None
    if weights_dtype == "int8":
        state = _quantize(model, state, keep)
    if keep is not None:
        state = _pack_masked(model, state, keep)
    tensors = {name: _storage(t, dtype).detach().cpu().contiguous() for name, t in state.items()}
    weights_tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    _make_readable(weights_tmp)
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    write_config(directory, config)  # last: a config never describes weights that are not there yet
    return config


def _masked_layers(model: MADEDensity) -> dict[str, MaskedLinear]:
    """State-dict prefix -> masked layer, e.g. "network.hidden.0", "network.output", "network.direct"."""
    return {f"network.{name}": m for name, m in model.network.named_modules() if isinstance(m, MaskedLinear)}


def _packed_names(model: MADEDensity) -> dict[str, tuple[MaskedLinear, str]]:
    """Tensor name -> (its layer, "weight" or "cond_weight"): the tensors the masked layout packs."""
    return {f"{prefix}.{param}": (layer, param) for prefix, layer in _masked_layers(model).items()
            for param in ("weight", "cond_weight") if getattr(layer, param) is not None}


def _storage(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating-point tensors in the storage dtype; degrees (int64 in memory, at most D) as int16 when they
    fit, which they do for D < 32768; int8 weights as they are."""
    if tensor.is_floating_point():
        return tensor.to(dtype)
    if tensor.dtype == torch.int64 and (tensor.numel() == 0 or int(tensor.abs().max()) <= torch.iinfo(torch.int16).max):
        return tensor.to(torch.int16)
    return tensor


def _kept_entries(model: MADEDensity, degrees: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Tensor name -> bool (out, in): the entries of each masked weight that some stored mask keeps (the
    union over masks), from the model's degrees or from `degrees` (the checkpoint's, before loading)."""
    network = model.network
    degrees = degrees or {f"network.{name}": t for name, t in network.named_buffers() if "degrees" in name}
    packed = _packed_names(model)
    keep = {name: torch.zeros_like(layer.mask, dtype=torch.bool) for name, (layer, _) in packed.items()}
    network.clear_masks()
    for k in range(network.config.n_masks):
        network.use_degrees(degrees["network.input_degrees"][k],
                            [degrees[f"network.hidden_degrees_{l}"][k] for l in range(len(network.hidden))],
                            member=k)
        for name, (layer, _) in packed.items():
            keep[name] |= layer.mask.bool()
    network.refresh_masks()
    return keep


def _quantize(model: MADEDensity, state: dict[str, torch.Tensor], keep: dict[str, torch.Tensor] | None):
    """int8 storage: each row of a masked weight as round(w / scale) in [-127, 127], scale = max |w| / 127
    over the row's stored entries (a per-row scale follows each unit's own weight range)."""
    state = dict(state)
    for name in _packed_names(model):
        weight = state[name].float()
        if keep is not None:
            weight = weight * keep[name]
        scale = weight.abs().amax(dim=1) / 127  # (out,)
        state[name] = torch.round(weight / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).to(torch.int8)
        state[name + SCALE_SUFFIX] = scale
    return state


def _pack_masked(model: MADEDensity, state: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]):
    """Each masked weight as the 1-D row-major list of the entries some mask keeps: the others never
    reach an output, so dropping them changes no probability."""
    state = dict(state)
    for name in _packed_names(model):
        state[name] = state[name][keep[name]]
    return state


def _unpack_masked(model: MADEDensity, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """The inverse of `_pack_masked`, in place, with masks rebuilt from the (already checked) degrees."""
    kept = _kept_entries(model, tensors)
    for name, (layer, param) in _packed_names(model).items():
        keep = kept[name]
        values = tensors[name]
        if values.dim() != 1 or values.numel() != int(keep.sum()):
            raise CheckpointError(
                f"{path} does not match {CONFIG_FILE}: tensor {name} (masked layout) holds "
                f"{list(values.shape)} values, its mask keeps {int(keep.sum())}"
            )
        dense = torch.zeros_like(getattr(layer, param), dtype=torch.float32)
        dense[keep] = values.float()
        tensors[name] = dense


def _make_readable(path: Path) -> None:
    """Ordinary file permissions (safetensors writes 0600): a server running as another user, e.g. in a
    container with the model repository mounted, must be able to read the checkpoint."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def write_config(directory: str | os.PathLike, config: CheckpointConfig) -> None:
    """Rewrite config.json alone (e.g. new calibration), atomically."""
    path = Path(directory) / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(config.model_dump_json(indent=2, exclude_none=True) + "\n")
    _make_readable(tmp)
    os.replace(tmp, path)


def read_config(directory: str | os.PathLike) -> CheckpointConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint at {directory}: not a directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (
            f" (found {', '.join(pickles)}: pickle checkpoints are never loaded, because unpickling runs code)"
            if pickles
            else ""
        )
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG_FILE}{hint}")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a made checkpoint config (expected \"format\": \"{FORMAT}\")")
    try:
        return CheckpointConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise CheckpointError(f"{path} is invalid: {problems}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent} has no {WEIGHTS_FILE}")
    try:
        # safetensors only ever parses a JSON header and copies raw bytes: safe to try on anything.
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        # Only now, on a file that is not safetensors, is the first byte worth a look: a pickle starts with
        # the PROTO opcode 0x80 and a protocol number, torch.save's zip container with "PK\x03\x04". (A valid
        # safetensors file can start with 0x80 too: its first bytes are the header's length.)
        if head[:1] == b"\x80" or head == b"PK\x03\x04":
            raise CheckpointError(
                f"{path} is a pickle (torch.save) file, not safetensors; pickles are never loaded, "
                "because unpickling runs code"
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated (not a readable safetensors file): {exc}") from None


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MADEDensity, CheckpointConfig]:
    """The model (float32, eval mode, on `device`) and its validated config."""
    directory = Path(directory)
    config = read_config(directory)
    try:
        network = MADE(config.network_config())
    except ValueError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE} describes an impossible model: {exc}") from None
    std = config.standardisation
    model = MADEDensity(
        network,
        config.make_likelihood(),
        shift=torch.tensor(std.shift) if std else None,
        scale=torch.tensor(std.scale) if std else None,
    )
    tensors = _read_weights(directory / WEIGHTS_FILE)
    expected = dict(model.state_dict())
    quantized = set(_packed_names(model)) if config.weights_dtype == "int8" else set()
    for name in quantized:  # (out,) float32 scales, one per row
        expected[name + SCALE_SUFFIX] = torch.zeros(expected[name].shape[0])
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: "
            + "; ".join(
                part
                for part in (
                    f"missing tensors {missing}" if missing else "",
                    f"unexpected tensors {unexpected}" if unexpected else "",
                )
                if part
            )
        )
    packed = _packed_names(model) if config.weights_layout == "masked" else {}
    for name, tensor in tensors.items():
        want = expected[name]
        if name not in packed and tuple(tensor.shape) != tuple(want.shape):  # packed: checked when unpacked
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: tensor {name} has shape "
                f"{list(tensor.shape)}, the config implies {list(want.shape)}"
            )
        if name in quantized:
            if tensor.dtype != torch.int8:
                raise CheckpointError(f"tensor {name} in {directory / WEIGHTS_FILE} should be int8 (weights_dtype int8)")
        elif want.is_floating_point():
            if not tensor.is_floating_point():
                raise CheckpointError(f"tensor {name} in {directory / WEIGHTS_FILE} should be floating point")
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"tensor {name} in {directory / WEIGHTS_FILE} holds NaN or Inf")
            tensors[name] = tensor.float()  # evaluation is float32 whatever the storage dtype
        elif tensor.is_floating_point():
            raise CheckpointError(f"tensor {name} in {directory / WEIGHTS_FILE} should be integer degrees")
        else:
            tensors[name] = tensor.long()
    try:
        for k in range(config.n_masks):
            check_degrees(
                tensors["network.input_degrees"][k],
                [tensors[f"network.hidden_degrees_{i}"][k] for i in range(len(config.hidden_sizes))],
                config.n_dims,
                allow_unused=config.mixture,
            )
        if config.mixture:
            check_mixture_blocks([tensors[f"network.hidden_degrees_{i}"] for i in range(len(config.hidden_sizes))])
    except ValueError as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} holds invalid mask degrees: {exc}") from None
    if packed:
        _unpack_masked(model, tensors, directory / WEIGHTS_FILE)
    for name in quantized:
        tensors[name] = tensors[name].float() * tensors.pop(name + SCALE_SUFFIX)[:, None]
    model.load_state_dict(tensors)
    return model.to(device).eval(), config
