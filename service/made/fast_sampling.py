"""Exact sampling at the cost of about one forward pass (instead of D).

A hidden unit of degree m depends only on the inputs at ordering positions <= m, so once those are fixed
its value never changes again. For each mask we permute the network once (a cached "plan"): inputs in
generation order and every layer's units sorted by degree. Then the units of degree p form one contiguous
slice, and all units of degree <= p a prefix. Sampling position q (0-based) is:

    params_q = b_out[q] + h_L[:, :end_L(q)] @ W_out[q][:end_L(q)]  (+ z[:, :q] @ W_direct[q][:q])
    z[:, q]  = draw from params_q with the row's pre-drawn noise for that dimension
    for each layer l, the units of degree p = q+1 are final now:
        h_l[:, slice_l(p)] = act(b_l + h_{l-1}[:, :end_{l-1}(p)] @ W_l[:end_{l-1}(p), slice_l(p)])
    (h_0 = z: the inputs fixed so far)

Each hidden unit is computed exactly once, from exactly the inputs its mask lets it see, and each output
parameter once: about one forward pass of arithmetic in D small steps. Mask conditioning is folded into
the biases. On a GPU those D small steps are about 5D kernel launches, each costing more than its arithmetic,
so there the whole walk is captured once per mask and batch size as a CUDA graph and replayed as one launch
(`GraphedWalk`). The randomness is the reference sampler's (`sampling.draw_randomness`) consumed in the same
order, so both samplers give the same samples for the same seed: identically for discrete heads (unless a
probability lies within float rounding of its uniform draw) and within float tolerance for real ones.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch

from .density import Density, MADEDensity
from .masks import layer_masks
from .sampling import Randomness, draw_randomness, sample_per_mask


@dataclass
class _MaskPlan:
    """One mask's network, permuted: inputs by position, every layer's units sorted by degree."""

    ordering: torch.Tensor  # (D,) the dimension generated at each position
    weights: list[torch.Tensor]  # (H_{l-1}, H_l) masked W_l^T; layer 0's rows are input positions
    biases: list[torch.Tensor]  # (H_l,) bias + mask-conditioning term
    slices: list[list[tuple[int, int]]]  # per layer, per degree p in 0..D: units [start, end) of degree p
    out_weights: torch.Tensor  # (D, H_L, P): output weights of the parameters of position q (rows: H_L units)
    out_bias: torch.Tensor  # (D, P)
    out_prefix: list[int]  # per position q: how many last-layer units (inputs, without layers) it sees
    direct: torch.Tensor | None  # (D, D, P): direct weights of position q from input positions
    position: torch.Tensor | None = None  # (D,) the position of each dimension: argsort(ordering)
    graphs: dict = field(default_factory=dict)  # rows -> GraphedWalk (CUDA), dropped with the plan
    # Per-step views, made once per plan: slicing in the loop would cost more than the arithmetic.
    out_steps: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None  # (bias, weights[:seen], seen)
    layer_steps: list[list[tuple[torch.Tensor, torch.Tensor, int, int, int] | None]] | None = None

    def __post_init__(self) -> None:
        D = len(self.ordering)
        self.position = torch.argsort(self.ordering)
        self.out_steps = [
            (self.out_bias[q], self.out_weights[q, : self.out_prefix[q]], self.out_prefix[q])
            for q in range(D)
        ]
        self.layer_steps = []
        for layer, (weights, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            steps = []
            for p in range(D + 1):
                start, end = self.slices[layer][p]
                # the previous layer's final prefix
                below_end = p if layer == 0 else self.slices[layer - 1][p][1]
                steps.append(
                    (bias[start:end], weights[:below_end, start:end], below_end, start, end)
                    if start < end
                    else None
                )
            self.layer_steps.append(steps)


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {mask: (weights version, plan)}


def _weights_version(model: MADEDensity) -> tuple:
    return tuple(p._version for p in model.parameters())  # bumped by every in-place update (optimizer steps)


def _plan(model: Density, k: int) -> tuple[MADEDensity, _MaskPlan]:
    """The network that computes component k, and the plan of its mask, cached until the weights change."""
    density, mask = model.component(k)
    cache = _PLANS.setdefault(density, {})
    version = (_weights_version(density), density.device, density.dtype)
    if mask not in cache or cache[mask][0] != version:
        network = density.network
        cache[mask] = (
            version,
            build_plan(density, network.input_degrees[mask], network.hidden_degrees(mask)),
        )
    return density, cache[mask][1]


@torch.no_grad()
def build_plan(
    model: MADEDensity, input_degrees: torch.Tensor, hidden_degrees: list[torch.Tensor]
) -> _MaskPlan:
    """The plan of any mask configuration of the model's network, given by its degrees (conditional
    sampling uses its own)."""
    net = model.network
    D, P = model.n_dims, net.params_per_dim
    input_degrees = input_degrees.to(model.device)
    hidden_degrees = [degrees.to(model.device) for degrees in hidden_degrees]
    masks = layer_masks(input_degrees, hidden_degrees, P)
    ordering = torch.argsort(input_degrees)  # position -> dimension
    previous_order = ordering
    weights, biases, slices = [], [], []
    for layer, degrees, mask in zip(net.hidden, hidden_degrees, masks.hidden, strict=True):
        order = torch.argsort(degrees, stable=True)  # the units by degree
        bias = layer.bias + ((layer.cond_weight * mask).sum(1) if layer.cond_weight is not None else 0)
        weights.append((layer.weight * mask)[order][:, previous_order].t().contiguous())
        biases.append(bias[order].contiguous())
        bounds = torch.searchsorted(degrees[order], torch.arange(D + 2, device=degrees.device)).tolist()
        slices.append([(bounds[p], bounds[p + 1]) for p in range(D + 1)])
        previous_order = order
    out = (net.output.weight * masks.output).view(P, D, -1)  # (P, D, H_L)
    out_weights = out[:, ordering][:, :, previous_order].permute(1, 2, 0).contiguous()  # (D, H_L, P)
    out_bias = net.output.bias.view(P, D)[:, ordering].t().contiguous()  # (D, P)
    if weights:  # position q sees the last-layer units of degree <= q (degrees count from 1)
        out_prefix = [slices[-1][q][1] for q in range(D)]
    else:
        out_prefix = list(range(D))  # no hidden layer: the output layer reads the inputs before q
    direct = None
    if net.direct is not None:
        d = (net.direct.weight * masks.direct).view(P, D, D)
        direct = d[:, ordering][:, :, ordering].permute(1, 2, 0).contiguous()  # (D, D, P)
    return _MaskPlan(ordering, weights, biases, slices, out_weights, out_bias, out_prefix, direct)


ACTIVATIONS_OUT = {  # activations that can write into a slice of the hidden buffer directly
    "relu": lambda x, out: torch.clamp_min(x, 0, out=out),
    "tanh": lambda x, out: torch.tanh(x, out=out),
    "sigmoid": lambda x, out: torch.sigmoid(x, out=out),
}


@torch.no_grad()
def sample_with_plan(
    model: MADEDensity, plan: _MaskPlan, noise: torch.Tensor, observed: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, D) standardised samples for rows that all use this plan; noise (n, D, R) in input order.
    `observed` (n, n_obs), standardised and by position, fixes the first n_obs positions instead of
    sampling them (conditional sampling: the plan's ordering puts the observed dimensions first)."""
    n, D = noise.shape[0], model.n_dims
    n_observed = 0 if observed is None else observed.shape[1]
    likelihood, act = model.likelihood, model.network.activation
    act_into = ACTIVATIONS_OUT.get(model.network.config.activation)
    bernoulli = likelihood.name == "bernoulli"
    # index_select rather than advanced indexing: the same values, and nothing that would stop a CUDA graph
    prepared = likelihood.prepare_noise(noise.index_select(1, plan.ordering))  # (n, D, R) by position
    z = torch.zeros(n, D, device=noise.device, dtype=model.dtype)  # samples by position
    z_columns, prepared_columns = z.unbind(1), prepared.unbind(1)
    hidden = [torch.zeros(n, b.shape[0], device=z.device, dtype=z.dtype) for b in plan.biases]
    last = hidden[-1] if hidden else z
    layer_steps = plan.layer_steps
    if n_observed:
        z[:, :n_observed] = observed
    for q, (out_bias, out_weights, seen) in enumerate(plan.out_steps):
        if q < n_observed:
            pass  # given, not drawn: only the hidden units it completes are computed below
        else:
            params = torch.addmm(out_bias, last[:, :seen], out_weights)  # (n, P)
            if plan.direct is not None and q:
                params.addmm_(z[:, :q], plan.direct[q, :q])
            if bernoulli:  # logit > logit(u), written straight into the sample column as 1.0 / 0.0
                torch.sub(params[:, 0], prepared_columns[q][:, 0], out=z_columns[q]).gt_(0)
            else:
                z_columns[q].copy_(likelihood.sample_prepared(params, prepared_columns[q]))
        below = z
        for layer, h in enumerate(hidden):
            step = layer_steps[layer][q + 1]  # units of degree q + 1 are final now
            if step is not None:
                bias, weights, below_end, start, end = step
                pre = torch.addmm(bias, below[:, :below_end], weights)
                if act_into is not None:
                    act_into(pre, h[:, start:end])
                else:
                    h[:, start:end] = act(pre)
            below = h
    return z.index_select(1, plan.position)  # back to the dimensions' own order


GRAPH_MAX_ROWS = 1024  # above this the walk is bound by arithmetic, not launches: no graph needed
GRAPH_DEVICES = (
    "cuda",
)  # where walks go through cached fixed-buffer walks (captured as graphs on CUDA only)
_CAPTURE_LOCK = threading.Lock()  # one capture at a time (the loader thread warms up while requests run)


def graph_rows(n: int) -> int:
    """The batch size of the graph that serves n rows: the next power of two, so a handful of graphs per
    mask serve every batch size (a graph's shapes are fixed when it is captured)."""
    return 1 << max(0, n - 1).bit_length()


class GraphedWalk:
    """The walk of one plan over fixed buffers of `rows` rows. Smaller batches are padded with copies of
    their first row (rows never interact, and a real row's noise keeps every value ordinary) and the padding
    is sliced off. With `capture` (CUDA) the walk is recorded once as a CUDA graph and each call replays it:
    the same kernels on the same buffers, so the same samples as the eager walk. Without it the walk runs
    eagerly over the same buffers, which is how the buffer handling is tested where there is no GPU."""

    def __init__(self, model: MADEDensity, plan: _MaskPlan, rows: int, noise_per_dim: int, capture: bool):
        # Normal tensors, not inference tensors, whichever mode the first call came in: the buffers are
        # written in place at every later call, which inference mode would forbid outside it.
        with torch.inference_mode(False), torch.no_grad():
            self._setup(model, plan, rows, noise_per_dim, capture)

    def _setup(
        self, model: MADEDensity, plan: _MaskPlan, rows: int, noise_per_dim: int, capture: bool
    ) -> None:
        self.rows = rows
        # 0.5 is an ordinary draw for every head (uniform or normal noise) while warming up and capturing
        self.noise = torch.full(
            (rows, model.n_dims, noise_per_dim), 0.5, device=model.device, dtype=model.dtype
        )
        self._walk = lambda: sample_with_plan(model, plan, self.noise)
        self.graph = None
        self.samples = None
        if capture:
            device = model.device
            with _CAPTURE_LOCK:
                # Warm up on a side stream first (cuBLAS handles and workspaces are created outside the
                # capture), as torch's CUDA graph notes prescribe.
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self._walk()
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # thread_local: other threads may keep computing (other models) while this one captures
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.samples = self._walk()
                self.graph = graph

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        n = noise.shape[0]
        if not 0 < n <= self.rows:
            raise ValueError(f"{n} rows for a walk of {self.rows}")
        with torch.inference_mode(False), torch.no_grad():
            return self._run(noise, n)

    def _run(self, noise: torch.Tensor, n: int) -> torch.Tensor:
        self.noise[:n].copy_(noise)
        if n < self.rows:
            self.noise[n:].copy_(noise[:1].expand(self.rows - n, -1, -1))
        if self.graph is None:
            self.samples = self._walk()
        else:
            self.graph.replay()
        return self.samples[:n].clone()  # the graph overwrites its output buffer at the next replay


def walk(model: MADEDensity, plan: _MaskPlan, noise: torch.Tensor, cuda_graphs: bool = True) -> torch.Tensor:
    """`sample_with_plan` for the plan's rows, through a cached CUDA graph where that pays."""
    n = noise.shape[0]
    if not cuda_graphs or noise.device.type not in GRAPH_DEVICES or not 0 < n <= GRAPH_MAX_ROWS:
        return sample_with_plan(model, plan, noise)
    rows = graph_rows(n)
    graphed = plan.graphs.get(rows)
    if graphed is None:
        graphed = plan.graphs[rows] = GraphedWalk(
            model, plan, rows, noise.shape[2], capture=noise.device.type == "cuda"
        )
    return graphed(noise)


def sample_fast_from_randomness(
    model: Density, randomness: Randomness, cuda_graphs: bool = True
) -> torch.Tensor:
    """(n, D) samples in original units; the same function of the randomness as the reference sampler.
    On CUDA each mask's walk runs as a CUDA graph unless `cuda_graphs` is off."""
    return sample_per_mask(
        model, randomness, lambda k, rows: walk(*_plan(model, k), randomness.noise[rows], cuda_graphs)
    )


def sample_fast(
    model: Density,
    n: int,
    masks: int | None = None,
    generator: torch.Generator | None = None,
    cuda_graphs: bool = True,
) -> torch.Tensor:
    """(n, D) samples from the K-mask ensemble at about one forward pass of cost."""
    return sample_fast_from_randomness(model, draw_randomness(model, n, masks, generator), cuda_graphs)
