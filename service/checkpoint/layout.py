"""How a model's tensors are laid out in weights.safetensors: pure functions of tensors and the config.

The dense layout is the network's state dict: "network.input_degrees" (M, D), "network.hidden_degrees_l"
(M, H_l), and each masked layer's weight, bias and conditioning weight. On top of it:
  * a mixture (`made merge`) is stored as one network whose layers are its members' side by side: member
    k's units form one contiguous block of every hidden layer (its hidden degrees are UNUSED elsewhere),
    and it owns the k-th block of P*D output and direct rows;
  * the masked layout stores only the weights some mask keeps, each matrix as the 1-D row-major list of
    those entries (a one-mask model or a mixture: about half the file);
  * int8 storage keeps each row of a masked weight matrix as int8 values times one float32 scale.
Nothing here touches a live model: saving and loading translate between these forms and state dicts.
"""

from __future__ import annotations

import torch

from ..made import MADEConfig
from ..made.masks import check_degrees, layer_masks

UNUSED = (
    0  # the hidden degree of a unit outside a member's block in a stored mixture (real degrees start at 1)
)
SCALE_SUFFIX = ".scale"  # int8: the per-row scale of a quantized weight, stored beside it
INPUT_DEGREES = "network.input_degrees"

Region = tuple[slice, ...]  # where a member's tensor sits in the stored (union) tensor


def hidden_degrees_name(layer: int) -> str:
    return f"network.hidden_degrees_{layer}"


def tensor_shapes(config: MADEConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the dense layout."""
    D, M, n_layers = config.n_dims, config.n_masks, len(config.hidden_sizes)
    rows = (M if config.mixture else 1) * config.params_per_dim * D
    sizes = [D, *config.hidden_sizes]
    shapes = {INPUT_DEGREES: (M, D)}
    for layer in range(n_layers):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        shapes[hidden_degrees_name(layer)] = (M, n_out)
        shapes[f"network.hidden.{layer}.weight"] = (n_out, n_in)
        shapes[f"network.hidden.{layer}.bias"] = (n_out,)
        if config.mask_conditioning:
            shapes[f"network.hidden.{layer}.cond_weight"] = (n_out, n_in)
    shapes["network.output.weight"] = (rows, sizes[-1])
    shapes["network.output.bias"] = (rows,)
    if config.direct_connections:
        shapes["network.direct.weight"] = (rows, D)
    return shapes


def masked_names(config: MADEConfig) -> list[str]:
    """The weight matrices that masks apply to: what the masked layout packs and int8 quantizes."""
    return [
        name
        for name, shape in tensor_shapes(config).items()
        if len(shape) == 2 and not name.startswith(("network.input_degrees", "network.hidden_degrees"))
    ]


# ---- where each mask's tensors sit ------------------------------------------------------------------------
def regions(config: MADEConfig, degrees: dict[str, torch.Tensor]) -> list[tuple[list[slice], slice]]:
    """Per mask k: its block of units in each hidden layer, and its block of output rows. A plain model's
    masks all use every unit and row; a mixture's blocks come from its degrees, checked to be contiguous,
    disjoint and non-empty (raises ValueError otherwise)."""
    n_layers = len(config.hidden_sizes)
    if not config.mixture:
        return [([slice(None)] * n_layers, slice(None))] * config.n_masks
    PD = config.params_per_dim * config.n_dims
    blocks: list[list[slice]] = [[] for _ in range(config.n_masks)]
    for layer in range(n_layers):
        used = degrees[hidden_degrees_name(layer)] != UNUSED  # (M, H_l)
        if bool((used.sum(dim=0) > 1).any()):
            raise ValueError(f"hidden layer {layer}: a unit is used by more than one mask of the mixture")
        for k, row in enumerate(used):
            units = row.nonzero().squeeze(1)
            if not len(units):
                raise ValueError(f"hidden layer {layer} has no unit in mask {k}")
            if int(units[-1] - units[0]) + 1 != len(units):
                raise ValueError(f"hidden layer {layer}: mask {k}'s units are not one contiguous block")
            blocks[k].append(slice(int(units[0]), int(units[-1]) + 1))
    return [(blocks[k], slice(k * PD, (k + 1) * PD)) for k in range(config.n_masks)]


def region_of(name: str, k: int, blocks: list[slice], rows: slice) -> Region:
    """Where mask k's part of tensor `name` sits: the rows of its units, and the columns of what they read
    (the D inputs for the first hidden layer and the direct connections, the previous layer's block else)."""
    if name == INPUT_DEGREES:
        return slice(k, k + 1), slice(None)
    if name.startswith("network.hidden_degrees_"):
        return slice(k, k + 1), blocks[int(name.rsplit("_", 1)[1])]
    _, layer_kind, *rest = name.split(".")
    if layer_kind == "hidden":
        layer = int(rest[0])
        out, reads = blocks[layer], (blocks[layer - 1] if layer else slice(None))
    elif layer_kind == "output":
        out, reads = rows, (blocks[-1] if blocks else slice(None))
    else:  # direct
        out, reads = rows, slice(None)
    return (out,) if rest[-1] == "bias" else (out, reads)


def mask_degrees(config: MADEConfig, degrees: dict[str, torch.Tensor], k: int, blocks: list[slice]):
    """(input degrees (D,), hidden degrees per layer) of mask k, on its own units only."""
    input_degrees = degrees[INPUT_DEGREES][k]
    layers = range(len(config.hidden_sizes))
    hidden = [degrees[hidden_degrees_name(layer)][k, blocks[layer]] for layer in layers]
    return input_degrees, hidden


def check_mask_degrees(config: MADEConfig, degrees: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless every mask's degrees describe a valid MADE (and a mixture's blocks hold)."""
    for k, (blocks, _) in enumerate(regions(config, degrees)):
        check_degrees(*mask_degrees(config, degrees, k, blocks), config.n_dims)


# ---- mixtures: members <-> one stored network --------------------------------------------------------------
def join_members(config: MADEConfig, members: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The stored tensors of a mixture (`config`: the mixture's) from its members' one-mask state dicts;
    entries outside every member's block are zero (and hidden degrees UNUSED there)."""
    shapes = tensor_shapes(config)
    layers = range(len(config.hidden_sizes))
    widths = [[m[hidden_degrees_name(layer)].shape[1] for layer in layers] for m in members]
    starts = [0] * len(config.hidden_sizes)
    joined = {name: torch.zeros(shape, dtype=members[0][name].dtype) for name, shape in shapes.items()}
    PD = config.params_per_dim * config.n_dims
    for k, member in enumerate(members):
        blocks = [slice(start, start + width) for start, width in zip(starts, widths[k], strict=True)]
        starts = [block.stop for block in blocks]
        for name, tensor in member.items():
            joined[name][region_of(name, k, blocks, slice(k * PD, (k + 1) * PD))] = tensor
    return joined


def split_members(config: MADEConfig, stored: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The inverse of `join_members`: each member's one-mask state dict."""
    return [
        {name: tensor[region_of(name, k, blocks, rows)].clone() for name, tensor in stored.items()}
        for k, (blocks, rows) in enumerate(regions(config, stored))
    ]


# ---- the masked layout -------------------------------------------------------------------------------------
def kept_entries(config: MADEConfig, degrees: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name -> bool (out, in): the entries of each masked weight that some stored mask keeps (the union over
    masks), from the degrees alone."""
    shapes = tensor_shapes(config)
    keep = {name: torch.zeros(shapes[name], dtype=torch.bool) for name in masked_names(config)}
    for k, (blocks, rows) in enumerate(regions(config, degrees)):
        masks = layer_masks(*mask_degrees(config, degrees, k, blocks), config.params_per_dim)
        per_layer = {f"network.hidden.{layer}": mask for layer, mask in enumerate(masks.hidden)}
        per_layer |= {"network.output": masks.output, "network.direct": masks.direct}
        for name in keep:
            region = region_of(name, k, blocks, rows)
            keep[name][region] |= per_layer[name.rsplit(".", 1)[0]].cpu()
    return keep


def pack_masked(state: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each masked weight as the 1-D row-major list of the entries some mask keeps: the others never reach
    an output, so dropping them changes no probability."""
    return {name: tensor[keep[name]] if name in keep else tensor for name, tensor in state.items()}


def unpack_masked(state: dict[str, torch.Tensor], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `pack_masked` (float32 matrices with zeros where no mask reaches); raises ValueError
    when a packed tensor does not hold what its mask keeps."""
    unpacked = dict(state)
    for name, kept in keep.items():
        values = state[name]
        count = int(torch.count_nonzero(kept))  # (10x faster than a bool sum: start-up time)
        if values.dim() != 1 or values.numel() != count:
            raise ValueError(
                f"tensor {name} (masked layout) holds {list(values.shape)} values, its mask keeps {count}"
            )
        # masked_scatter_ fills the kept entries in row-major order, as pack_masked read them (and 3x
        # faster than boolean index assignment)
        unpacked[name] = torch.zeros(kept.shape, dtype=torch.float32).masked_scatter_(kept, values.float())
    return unpacked


# ---- int8 --------------------------------------------------------------------------------------------------
def quantize(state: dict[str, torch.Tensor], names: list[str], keep: dict[str, torch.Tensor] | None):
    """int8 storage: each row of a masked weight as round(w / scale) in [-127, 127], scale = max |w| / 127
    over the row's stored entries (a per-row scale follows each unit's own weight range)."""
    state = dict(state)
    for name in names:
        weight = state[name].float()
        if keep is not None:
            weight = weight * keep[name]
        scale = weight.abs().amax(dim=1) / 127  # (out,)
        state[name] = torch.round(weight / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).to(
            torch.int8
        )
        state[name + SCALE_SUFFIX] = scale
    return state


def dequantize(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    state = dict(state)
    for name in names:
        state[name] = state[name].float() * state.pop(name + SCALE_SUFFIX)[:, None]
    return state
