"""Checkpoints on disk: a model version is a directory holding `config.json` and `weights.safetensors`.

config.json describes the architecture, the likelihood, the standardisation statistics and how the model
was trained (schema.py); weights.safetensors holds the weights and the mask degree vectors (layout.py).
Loading validates the config, then checks the tensors against what the config implies, and fails with one
`CheckpointError` naming the problem. Nothing is ever unpickled: safetensors is a flat header plus raw bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..calibration import Calibration
from ..made import Density, MADEDensity, MADEMixture
from . import layout
from .schema import DTYPES, FORMAT, FORMAT_VERSION, CheckpointConfig, CheckpointError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def save(
    model: Density,
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
    not stored: about half the file) and "dense" otherwise. The model itself is only read."""
    if weights_layout is None:
        weights_layout = "masked" if model.n_masks == 1 or model.config.mixture else "dense"
    config = CheckpointConfig.describing(
        model,
        input_shape=input_shape,
        training=training,
        calibration=calibration,
        weights_dtype=weights_dtype,
        weights_layout=weights_layout,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[weights_dtype]
    tensors = {name: _storage(t, dtype).contiguous() for name, t in _encode(model, config).items()}
    weights_tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    _make_readable(weights_tmp)
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    write_config(directory, config)  # last: a config never describes weights that are not there yet
    return config


def _encode(model: Density, config: CheckpointConfig) -> dict[str, torch.Tensor]:
    """The model's tensors in the checkpoint's layout (on the CPU; the model is not changed)."""
    if isinstance(model, MADEMixture):
        state = layout.join_members(config, [_cpu_state(member) for member in model.members])
    else:
        state = _cpu_state(model)
    keep = layout.kept_entries(config, state) if config.weights_layout == "masked" else None
    if config.weights_dtype == "int8":
        state = layout.quantize(state, layout.masked_names(config), keep)
    return layout.pack_masked(state, keep) if keep is not None else state


def _cpu_state(model: MADEDensity) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu() for name, t in model.state_dict().items()}


def _storage(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating-point tensors in the storage dtype; degrees (int64 in memory, at most D) as int16 when they
    fit, which they do for D < 32768; int8 weights as they are."""
    if tensor.is_floating_point():
        return tensor.to(dtype)
    if tensor.dtype == torch.int64 and (
        tensor.numel() == 0 or int(tensor.abs().max()) <= torch.iinfo(torch.int16).max
    ):
        return tensor.to(torch.int16)
    return tensor


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
            f" (found {', '.join(pickles)}: pickle checkpoints are never loaded, "
            "because unpickling runs code)"
            if pickles
            else ""
        )
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG_FILE}{hint}")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f'{path} is not a made checkpoint config (expected "format": "{FORMAT}")')
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
        raise CheckpointError(
            f"{path} is corrupt or truncated (not a readable safetensors file): {exc}"
        ) from None


def load(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Density, CheckpointConfig]:
    """The model (float32, eval mode, on `device`) and its validated config."""
    directory = Path(directory)
    config = read_config(directory)
    path = directory / WEIGHTS_FILE
    state = _decode(_read_weights(path), config, path)
    std = config.standardisation
    shift, scale = (torch.tensor(std.shift), torch.tensor(std.scale)) if std else (None, None)
    architecture = config.architecture
    try:
        if architecture.mixture:
            member_config = architecture.model_copy(update=dict(n_masks=1, eval_masks=1, mixture=False))
            members = []
            for k, member_state in enumerate(layout.split_members(architecture, state)):
                widths = [
                    member_state[layout.hidden_degrees_name(layer)].shape[1]
                    for layer in range(len(config.hidden_sizes))
                ]
                # Degrees are loaded: `order` says how mask 0 was first drawn, else a member's own ordering.
                order = config.order if k == 0 else member_state[layout.INPUT_DEGREES][0].argsort().tolist()
                member = MADEDensity.from_config(
                    member_config.model_copy(update=dict(hidden_sizes=widths, order=order)),
                    shift=shift,
                    scale=scale,
                )
                member.load_state_dict(member_state)
                members.append(member)
            model = MADEMixture(members, eval_masks=config.eval_masks)
        else:
            model = MADEDensity.from_config(architecture, shift=shift, scale=scale)
            model.load_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE} describes an impossible model: {exc}") from None
    return model.to(device).eval(), config


def _decode(
    tensors: dict[str, torch.Tensor], config: CheckpointConfig, path: Path
) -> dict[str, torch.Tensor]:
    """The dense float32 state (int64 degrees) from the stored tensors, each checked against the config."""
    mismatch = f"{path} does not match {CONFIG_FILE}"
    shapes = layout.tensor_shapes(config)
    quantized = layout.masked_names(config) if config.weights_dtype == "int8" else []
    expected = set(shapes) | {name + layout.SCALE_SUFFIX for name in quantized}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        problems = [
            f"missing tensors {missing}" if missing else "",
            f"unexpected tensors {unexpected}" if unexpected else "",
        ]
        raise CheckpointError(f"{mismatch}: " + "; ".join(p for p in problems if p))
    packed = set(layout.masked_names(config)) if config.weights_layout == "masked" else set()
    state = {}
    for name, tensor in tensors.items():
        want = shapes.get(name) or (shapes[name.removesuffix(layout.SCALE_SUFFIX)][0],)
        if name not in packed and tuple(tensor.shape) != want:  # packed: checked when unpacked
            raise CheckpointError(
                f"{mismatch}: tensor {name} has shape {list(tensor.shape)}, the config implies {list(want)}"
            )
        if name in quantized:
            if tensor.dtype != torch.int8:
                raise CheckpointError(f"tensor {name} in {path} should be int8 (weights_dtype int8)")
            state[name] = tensor
        elif "degrees" not in name:
            if not tensor.is_floating_point():
                raise CheckpointError(f"tensor {name} in {path} should be floating point")
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"tensor {name} in {path} holds NaN or Inf")
            state[name] = tensor.float()  # evaluation is float32 whatever the storage dtype
        elif tensor.is_floating_point():
            raise CheckpointError(f"tensor {name} in {path} should be integer degrees")
        else:
            state[name] = tensor.long()
    try:
        layout.check_mask_degrees(config, state)
    except ValueError as exc:
        raise CheckpointError(f"{path} holds invalid mask degrees: {exc}") from None
    if packed:
        try:
            state = layout.unpack_masked(state, layout.kept_entries(config, state))
        except ValueError as exc:
            raise CheckpointError(f"{mismatch}: {exc}") from None
    return layout.dequantize(state, quantized)
